"""pocketsphinx (CMU Sphinx): offline English speech recognition on CPU, with its model in the package.

``source: en-us`` is the en-US acoustic model, language model and pronunciation dictionary that ship inside
the ``pocketsphinx`` wheel; no download, ever. ``options`` may point at other files instead (``hmm``: an
acoustic model directory, ``lm``: an ARPA or binary language model, ``dict``: a dictionary), with paths
relative to the process's working directory.

Audio is cut into utterances by pocketsphinx's voice-activity endpointer (``Endpointer``, options
``vad_mode`` 0-3 and ``vad_window_s``), and each utterance is decoded on its own: one segment per utterance, with word timings from the decoder's word
segmentation and each word's posterior probability. So long audio is decoded utterance by utterance, in
bounded memory. Silence and noise markers (``<s>``, ``<sil>``, ``[NOISE]``) are dropped, and alternative
pronunciations (``hello(2)``) are reported as the word.

The engine knows English only and does not translate (the HTTP side refuses both before any work);
``prompt`` and ``temperature`` have no meaning for it and are ignored. It runs on CPU only: asked for a GPU,
it reports "cpu", which the runtime refuses unless the catalog allows the fallback.
"""

from __future__ import annotations

import logging
import math
import os
import zlib
from typing import Any

import numpy as np

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import SAMPLE_RATE, TranscribeItem, join_text, ms

log = logging.getLogger(__name__)

PACKAGE_MODEL = "en-us"
FRAMES_PER_S = 100  # the decoder's frame rate (-frate)
DEFAULT_VAD_MODE = 2  # 0 (loose) .. 3 (strict)
DEFAULT_VAD_WINDOW_S = 0.3


class PocketsphinxTranscriber(Backend):
    preload = ("pocketsphinx",)  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.decoder: Any = None
        o = spec.options
        self.vad_mode = int(o.get("vad_mode", DEFAULT_VAD_MODE))
        self.vad_window_s = float(o.get("vad_window_s", DEFAULT_VAD_WINDOW_S))

    def load(self) -> str:
        from pocketsphinx import Decoder, get_model_path

        config: dict[str, Any] = {}
        if self.spec.source == PACKAGE_MODEL:
            base = os.path.join(get_model_path(), "en-us")
            config = {"hmm": os.path.join(base, "en-us"), "lm": os.path.join(base, "en-us.lm.bin"),
                      "dict": os.path.join(base, "cmudict-en-us.dict")}
        elif not os.path.isdir(self.spec.source):
            raise ValueError(f"model {self.spec.id!r}: source must be {PACKAGE_MODEL!r} (the model in the package) "
                             f"or an acoustic model directory, not {self.spec.source!r}")
        else:
            config["hmm"] = self.spec.source
        for key in ("hmm", "lm", "dict"):
            if key in self.spec.options:
                config[key] = str(self.spec.options[key])
        for key, path in config.items():
            if not os.path.exists(path):
                raise FileNotFoundError(f"model {self.spec.id!r}: {key} {path} does not exist")
        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **config)
        return "cpu"  # pocketsphinx has no GPU code

    def warmup(self) -> None:
        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
        [result] = self.infer([TranscribeItem(audio=tone, language="en")])
        if not isinstance(result["text"], str):
            raise RuntimeError(f"warm-up produced {result!r}, not a transcript")
        # and one utterance through the decoder itself, whatever the endpointer made of the tone
        self._decode(tone.tobytes())

    def infer(self, items: list[TranscribeItem]) -> list[dict[str, Any]]:
        return [self._transcribe(item) for item in items]

    def _transcribe(self, item: TranscribeItem) -> dict[str, Any]:
        segments: list[dict[str, Any]] = []
        words: list[dict[str, Any]] = []
        for start, end in self._utterances(item.audio):
            text, found, logprob = self._decode(item.audio[start:end].tobytes())
            if not text:
                continue
            start_s = start / SAMPLE_RATE
            segments.append({
                "id": len(segments), "seek": round(start_s * FRAMES_PER_S), "start": ms(start_s), "end": ms(end / SAMPLE_RATE),
                "text": text, "tokens": [], "temperature": 0.0, "avg_logprob": logprob,
                "compression_ratio": _compression_ratio(text), "no_speech_prob": 0.0,
            })
            words += [{**w, "start": ms(w["start"] + start_s), "end": ms(w["end"] + start_s)} for w in found]
        return {
            "text": join_text([s["text"] for s in segments]),
            "language": "en",
            "duration": ms(item.duration_s),
            "segments": segments,
            "words": words if item.word_timestamps else None,
        }

    def _utterances(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """Speech regions as sample ranges: where the VAD endpointer heard speech, widened by its window on
        both sides (the endpointer decides a window late, and a clipped first consonant turns "the" into
        "a"), overlapping regions merged."""
        from pocketsphinx import Endpointer

        ep = Endpointer(window=self.vad_window_s, vad_mode=self.vad_mode, sample_rate=SAMPLE_RATE)
        raw = audio.astype(np.int16, copy=False).tobytes()
        step = ep.frame_bytes
        # The stream must end with end_stream(), which takes 1 to frame_bytes bytes (not 0): keep the last
        # partial frame for it, or the last whole frame when the audio is a whole number of frames.
        whole = (len(raw) - 1) // step * step
        pad = int(self.vad_window_s * SAMPLE_RATE)
        regions: list[tuple[int, int]] = []

        def take(frame: bytes | None) -> None:
            if frame is not None and not ep.in_speech:  # the last frame of an utterance
                start = max(0, int(ep.speech_start * SAMPLE_RATE) - pad)
                end = min(len(audio), int(ep.speech_end * SAMPLE_RATE) + pad)
                if regions and start <= regions[-1][1]:
                    regions[-1] = (regions[-1][0], end)
                else:
                    regions.append((start, end))

        for i in range(0, whole, step):
            take(ep.process(raw[i:i + step]))
        # Always end the stream: audio that ends mid-speech (as synthesised speech does) would otherwise
        # lose its last utterance.
        if raw:
            take(ep.end_stream(raw[whole:]))
        return regions

    def _decode(self, pcm: bytes) -> tuple[str, list[dict[str, Any]], float]:
        d = self.decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None or not hyp.hypstr.strip():
            return "", [], 0.0
        words = []
        for seg in d.seg():
            word = seg.word
            if word.startswith(("<", "[")):
                continue
            words.append({
                "word": word.split("(", 1)[0],
                "start": seg.start_frame / FRAMES_PER_S,
                "end": (seg.end_frame + 1) / FRAMES_PER_S,  # end_frame is inclusive
                "probability": round(min(1.0, max(0.0, float(seg.prob))), 4),
            })
        logprob = math.log(max(float(hyp.prob), 1e-12)) / max(1, len(words))
        return hyp.hypstr.strip(), words, round(logprob, 4)

    def close(self) -> None:
        self.decoder = None


def _compression_ratio(text: str) -> float:
    """Whisper's repetition check, computed the same way: bytes over zlib-compressed bytes."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0
