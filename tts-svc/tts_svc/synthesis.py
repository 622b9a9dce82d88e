"""One request's synthesis: sentences in, encoded audio chunks out, in order, as each sentence is done.

How the kit's item/batch model is used: each sentence is one item. The request keeps at most
``lookahead`` sentences submitted ahead of the one it is streaming: when sentence *i* is streamed,
sentence *i + lookahead* is submitted. So the model is never idle while this request has text left (the
next sentence is already queued when one finishes), yet one long text cannot fill the model's queue:
concurrent requests' sentences interleave with it, and each request gets its first audio after about
one sentence of work. TTS models run with ``max_batch: 1`` (a batch would only hold a sentence back
until its batch-mates are done); a larger ``max_batch`` still works, with coarser chunks.

Pieces with nothing to say (``sentences.Sentence.speakable`` false) never reach a backend: they become a
short pause. Encoding (PyAV) runs in a worker thread, never on the event loop.

Invariant: every item submitted is either awaited or cancelled before ``stream`` returns (a cancelled
item is dropped by the batcher before dispatch), so an abandoned stream leaves no work behind.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from starlette.concurrency import run_in_threadpool

from modelhost.runtime import Lease

from .encoding import Encoder
from .items import SpeechAudio, SpeechItem
from .sentences import Sentence


@dataclass
class StreamStats:
    sentences: int = 0
    audio_s: float = 0.0
    first_audio_s: float | None = None
    started: float = field(default_factory=time.perf_counter)


class SpeechStream:
    """Submits sentences to a leased model and yields their encoded audio in order."""

    def __init__(self, lease: Lease, sentences: list[Sentence], *, voice: str, speed: float, language: str | None,
                 encoder: Encoder, lookahead: int, pause_s: float) -> None:
        self._lease = lease
        self._sentences = sentences
        self._voice, self._speed, self._language = voice, speed, language
        self._encoder = encoder
        self._lookahead = lookahead
        self._pause_s = pause_s
        self._next = 0
        self._pending: collections.deque[asyncio.Future[SpeechAudio] | None] = collections.deque()
        self.stats = StreamStats()

    def _submit_more(self) -> None:
        in_flight = sum(1 for p in self._pending if p is not None)
        while self._next < len(self._sentences) and in_flight < self._lookahead:
            sentence = self._sentences[self._next]
            self._next += 1
            if not sentence.speakable:
                self._pending.append(None)  # a pause: made here, in order
                continue
            item = SpeechItem(text=sentence.text, voice=self._voice, speed=self._speed, language=self._language)
            self._pending.append(asyncio.ensure_future(self._lease.infer(item)))
            in_flight += 1

    async def chunks(self) -> AsyncIterator[bytes]:
        """Encoded bytes, in order; the last chunk completes the file. Cancels what is left on exit."""
        try:
            self._submit_more()
            while self._pending:
                pending = self._pending.popleft()
                if pending is None:
                    data = await run_in_threadpool(self._encoder.pause, self._pause_s)
                else:
                    audio = await pending
                    self._submit_more()
                    self.stats.sentences += 1
                    self.stats.audio_s += audio.duration_s
                    data = await run_in_threadpool(self._encoder.encode, audio.pcm, audio.sample_rate)
                if self.stats.first_audio_s is None:
                    self.stats.first_audio_s = time.perf_counter() - self.stats.started
                self._submit_more()
                if data:
                    yield data
            tail = await run_in_threadpool(self._encoder.finish)
            if tail:
                yield tail
        finally:
            self.cancel()

    def cancel(self) -> None:
        for pending in self._pending:
            if pending is not None and not pending.done():
                pending.cancel()
            elif pending is not None and pending.done() and not pending.cancelled():
                pending.exception()  # retrieved: no "exception never retrieved" warning
        self._pending.clear()
        self._encoder.close()
