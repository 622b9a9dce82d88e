"""What an ASR backend receives and returns, shared by the HTTP side and the worker.

The HTTP side decodes the upload to 16 kHz mono 16-bit PCM (``audio.decode_audio``) and builds a
``TranscribeItem``; the worker pickles items across the process boundary, so this module imports nothing
heavy (numpy only). PCM travels as int16, half the bytes of float32: an hour of audio is 115 MB. Backends
convert one chunk at a time to what their model wants.

A backend returns one plain dict per item (a ``Transcript``): times are seconds from the start of the
audio, rounded to milliseconds; ``words`` is ``None`` unless the item asked for word timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np

SAMPLE_RATE = 16000
"""Every backend here takes 16 kHz mono audio."""

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class TranscribeItem:
    audio: np.ndarray
    """Mono 16 kHz int16 PCM, at least one sample."""
    task: Task = "transcribe"
    """``translate`` produces English text from speech in any language the model knows."""
    language: str | None = None
    """ISO-639-1 code of the spoken language (for ``translate``: the source language); ``None``: detect."""
    prompt: str | None = None
    """Text that conditions the first window (spellings, style, the previous part of a conversation)."""
    temperature: float | None = None
    """Sampling temperature; ``None`` or 0 means greedy with the backend's fallback to higher temperatures
    when a window fails its quality checks (OpenAI's meaning of 0)."""
    word_timestamps: bool = False
    """Whether the result needs ``words``; costs extra time on the Whisper backends."""
    condition_on_previous_text: bool | None = None
    """Whisper backends: feed each window the text of the one before; ``None``: the model's default (off)."""
    vad_filter: bool | None = None
    """faster-whisper: skip what Silero VAD hears as silence; ``None``: the model's default (on past 30 s)."""
    drop_repeats: bool | None = None
    """Whisper backends: drop a segment that repeats the ones before it; ``None``: the model's default (on)."""

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class Segment(TypedDict):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class Word(TypedDict):
    word: str
    start: float
    end: float
    probability: float


class Transcript(TypedDict):
    text: str
    language: str | None
    duration: float
    segments: list[Segment]
    words: list[Word] | None


def ms(t: float) -> float:
    """Seconds rounded to the millisecond, as a plain float (numpy scalars do not belong in results)."""
    return round(float(t), 3)


def join_text(parts: list[str]) -> str:
    """Segment texts → one transcript: Whisper's segments carry their own leading space; others do not."""
    return " ".join(p.strip() for p in parts if p.strip())


def empty_transcript(duration_s: float, language: str | None) -> dict[str, Any]:
    return {"text": "", "language": language, "duration": ms(duration_s), "segments": [], "words": []}
