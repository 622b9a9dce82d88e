"""openai-whisper (PyTorch): ``whisper.load_model(source)`` and ``model.transcribe(float32 array)``.

``source`` is an official model name (``small``, ``large-v3``: downloaded from OpenAI's CDN into
``<cache_dir>/whisper`` on first load, or ahead by a pull, ``modelhost.pull_urls``) or the path of a
checkpoint. The worker hands audio as int16 PCM; it becomes float32 one chunk at a time
(``chunks.chunk_bounds``, ``options.chunk_s``, default 600 s), so memory for features grows with the chunk,
not the file. The language found in the first chunk is kept for the next ones.

dtype: ``float16`` runs the model in half precision on a GPU (whisper casts per layer); CPU always runs
float32. Options: ``max_new_tokens`` (tokens per 30 s window), ``beam_size``, ``best_of``, ``chunk_s``,
``condition_on_previous_text`` (default false, as in the faster-whisper backend: one wrong window does not
drag the next ones into a loop; a request may turn it on), ``temperature_fallback`` (default true: temperature 0 retries
a window at 0.2 … 1.0 when it fails whisper's compression or log-probability checks), ``without_timestamps``
(default false: one segment per 30 s window instead of Whisper's timestamped phrases).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from modelhost.backend import Backend, torch_device
from modelhost.catalog import ModelSpec

from ..chunks import chunk_bounds, to_float32
from ..items import SAMPLE_RATE, TranscribeItem, join_text, ms

log = logging.getLogger(__name__)

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_CHUNK_S = 600.0
SUPPORTED_DTYPES = ("float32", "float16")


class WhisperTranscriber(Backend):
    preload = ("torch", "whisper")  # what a warm spare imports ahead (``Backend.preload``)

    @classmethod
    def prepare(cls) -> None:
        """A warm spare builds what every first transcription of a process would: the tokenizers' special-token
        regex (0.8 s here, most of a first warm-up), for English-only models and multilingual ones (99
        languages; large-v3's 100), the first ``load_model`` and torch's first CPU kernels (a throwaway
        Whisper of width 64 with random weights, saved to a temporary file, loaded back and run once on the CPU),
        and the word-timestamp alignment's numba compile. No device, and no real model's weights."""
        import tempfile
        from dataclasses import asdict

        import numpy as np
        import torch
        import whisper
        from whisper.model import ModelDimensions, Whisper
        from whisper.timing import dtw_cpu
        from whisper.tokenizer import get_tokenizer

        for multilingual, languages in ((False, 99), (True, 99), (True, 100)):
            get_tokenizer(multilingual, num_languages=languages).non_speech_tokens  # noqa: B018 - builds its cache
        dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=1, n_audio_layer=1,
                               n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=1, n_text_layer=1)
        with tempfile.TemporaryDirectory(prefix="roundhouse-spare-") as d:
            path = os.path.join(d, "throwaway.pt")
            torch.save({"dims": asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
            model = whisper.load_model(path, device="cpu")
        whisper.transcribe(model, np.zeros(SAMPLE_RATE, dtype=np.float32), fp16=False, temperature=0.0,
                           without_timestamps=True, condition_on_previous_text=False)
        dtw_cpu(np.zeros((2, 2), dtype=np.float64))

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        o = spec.options
        self.model: Any = None
        self.device = "cpu"
        self.fp16 = False
        self.max_new_tokens: int | None = o.get("max_new_tokens")
        self.beam_size: int | None = o.get("beam_size")
        self.best_of: int | None = o.get("best_of")
        self.chunk_s = float(o.get("chunk_s", DEFAULT_CHUNK_S))
        self.condition_on_previous_text = bool(o.get("condition_on_previous_text", False))
        self.temperature_fallback = bool(o.get("temperature_fallback", True))
        self.without_timestamps = bool(o.get("without_timestamps", False))

    def load(self) -> str:
        import whisper

        if self.spec.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"model {self.spec.id!r}: dtype {self.spec.dtype!r} is not supported by the whisper backend "
                             f"(use one of {', '.join(SUPPORTED_DTYPES)})")
        device = torch_device(self.spec)
        if not os.path.exists(self.spec.source):
            log.info("model %s: loading %s (downloaded into %s on first use)", self.spec.id, self.spec.source, self.cache_dir)
        self.model = whisper.load_model(self.spec.source, device=device, download_root=os.path.join(self.cache_dir, "whisper"))
        self.device = str(next(self.model.parameters()).device)
        self.fp16 = self.spec.dtype == "float16" and self.device.startswith("cuda")
        if self.spec.dtype == "float16" and not self.fp16:
            log.info("model %s: dtype float16 asked for, running float32 on %s", self.spec.id, self.device)
        return self.device

    def warmup(self) -> None:
        import numpy as np

        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
        # Without word timestamps: their alignment (numba) compiles on its first use, a few seconds that the
        # first request asking for words pays, not every load.
        [result] = self.infer([TranscribeItem(audio=tone, language=None if self.model.is_multilingual else "en")])
        if not isinstance(result["text"], str):
            raise RuntimeError(f"warm-up produced {result!r}, not a transcript")

    def infer(self, items: list[TranscribeItem]) -> list[dict[str, Any]]:
        # transcribe() takes one audio at a time; a batch is run item by item.
        return [self._transcribe(item) for item in items]

    def _transcribe(self, item: TranscribeItem) -> dict[str, Any]:
        language = item.language
        segments: list[dict[str, Any]] = []
        words: list[dict[str, Any]] = []
        for index, (start, end) in enumerate(chunk_bounds(item.audio, max_chunk_s=self.chunk_s)):
            result = self.model.transcribe(to_float32(item.audio[start:end]), **self._options(item, language, first=index == 0))
            language = language or result.get("language")
            offset, length = start / SAMPLE_RATE, (end - start) / SAMPLE_RATE
            for s in result["segments"]:
                if not s["text"].strip():
                    continue  # a window decoded to nothing but timestamps
                segments.append(_segment(len(segments), s, offset, length))
                for w in s.get("words") or ():
                    words.append({"word": w["word"], "start": _at(w["start"], offset, length),
                                  "end": _at(w["end"], offset, length), "probability": round(float(w["probability"]), 4)})
        return {
            "text": join_text([s["text"] for s in segments]),
            "language": language,
            "duration": ms(item.duration_s),
            "segments": segments,
            "words": words if item.word_timestamps else None,
        }

    def _options(self, item: TranscribeItem, language: str | None, *, first: bool) -> dict[str, Any]:
        if item.temperature:
            temperature: float | tuple[float, ...] = item.temperature
        else:
            temperature = FALLBACK_TEMPERATURES if self.temperature_fallback else 0.0
        options: dict[str, Any] = {
            "task": item.task,
            "language": language,
            "temperature": temperature,
            "initial_prompt": item.prompt if first else None,
            "word_timestamps": item.word_timestamps,
            "condition_on_previous_text": self.condition_on_previous_text if item.condition_on_previous_text is None
            else item.condition_on_previous_text,
            "fp16": self.fp16,
            "verbose": None,  # no printing, no progress bar
            "without_timestamps": self.without_timestamps,
        }
        if self.max_new_tokens is not None:
            options["sample_len"] = int(self.max_new_tokens)
        if self.beam_size is not None:
            options["beam_size"] = int(self.beam_size)
        if self.best_of is not None:
            options["best_of"] = int(self.best_of)
        return options

    def close(self) -> None:
        on_gpu = self.device.startswith("cuda")
        self.model = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


def _at(t: float, offset: float, length: float) -> float:
    """A time inside a chunk → seconds from the start of the audio. Whisper's timestamp tokens can point past
    the end of the audio (into the padding of the last 30 s window); such times are clamped to the end."""
    return ms(offset + min(max(float(t), 0.0), length))


def _segment(index: int, s: dict[str, Any], offset: float, length: float) -> dict[str, Any]:
    return {
        "id": index,
        "seek": int(s["seek"]) + round(offset * 100),  # whisper counts seek in 10 ms mel frames
        "start": _at(s["start"], offset, length),
        "end": _at(s["end"], offset, length),
        "text": s["text"],
        "tokens": [int(t) for t in s["tokens"]],
        "temperature": float(s["temperature"]),
        "avg_logprob": float(s["avg_logprob"]),
        "compression_ratio": float(s["compression_ratio"]),
        "no_speech_prob": float(s["no_speech_prob"]),
    }
