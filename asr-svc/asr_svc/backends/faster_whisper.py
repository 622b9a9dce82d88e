"""faster-whisper: Whisper on CTranslate2.

``source`` is a CTranslate2 model directory (it must hold ``tokenizer.json``, or faster-whisper fetches one
from the hub), a size name (``small``, ``large-v3``) or a hub id (``Systran/faster-whisper-large-v3``);
the last two are downloaded into the cache dir on first load.

Compute type: ``options.compute_type`` if set, else from ``dtype`` (float16 → ``float16``, bfloat16 →
``bfloat16``, int8 → ``int8_float16`` on a GPU and ``int8`` on CPU, float32 → ``float32``). A type the
device cannot run (float16 on most CPUs) falls back to ``int8`` on CPU and ``float32`` elsewhere, with a
log line. The device reported is CTranslate2's own answer (``model.device``, ``device_index``), and the
compute type really used is logged (``model.compute_type``).

Long audio: chunks of ``options.chunk_s`` (default 600 s) cut at quiet points, and CTranslate2's Silero VAD
filter (``vad_filter``: ``auto`` (default) = on for audio longer than ``vad_min_s``, 30 s; or true/false),
which skips silence instead of decoding it and stops Whisper inventing text there. ``batch_size`` > 1
decodes the VAD segments of one audio in batches (faster-whisper's BatchedInferencePipeline).

Against Whisper's failure modes (hallucinated and repeated text; measured in bench/asr_real.py):

- ``condition_on_previous_text`` (default **false**): a window is not fed the text of the one before, so one
  wrong window cannot drag the next ones into a loop. A request may turn it back on.
- ``vad_filter`` (above; a request may set it true or false).
- ``compression_ratio_threshold`` (2.4), ``log_prob_threshold`` (-1.0), ``no_speech_threshold`` (0.6):
  a window whose text compresses too well (a loop) or is too unlikely is decoded again at a higher temperature
  (``temperature_fallback``); one the model thinks is not speech, and unlikely, is left out.
- ``drop_repeats`` (default true; ``repeat_window`` 3 segments, ``repeat_min_words`` 3): a segment whose words
  repeat what the segments before it just said is dropped (``asr_svc.repeats``). A request may turn it off.

Other options: ``max_new_tokens``, ``beam_size`` (default 5), ``cpu_threads`` (0 = CTranslate2's choice),
``temperature_fallback`` (default true), ``without_timestamps`` (default false).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..chunks import chunk_bounds, to_float32
from ..items import SAMPLE_RATE, TranscribeItem, join_text, ms
from ..repeats import DEFAULT_MIN_WORDS, DEFAULT_WINDOW, drop_repeats

log = logging.getLogger(__name__)

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_CHUNK_S = 600.0
DEFAULT_VAD_MIN_S = 30.0
# faster-whisper's (and openai-whisper's) own values, stated here so the catalog can change them.
DEFAULT_COMPRESSION_RATIO_THRESHOLD = 2.4
DEFAULT_LOG_PROB_THRESHOLD = -1.0
DEFAULT_NO_SPEECH_THRESHOLD = 0.6
DTYPE_COMPUTE = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "int8": "int8"}


def compute_type_for(spec: ModelSpec, device: str, supported: set[str]) -> str:
    """The CTranslate2 compute type for ``spec`` on ``device`` ("cpu" or "cuda"), given the types the
    device supports (``ctranslate2.get_supported_compute_types``)."""
    wanted = spec.options.get("compute_type")
    if wanted is None:
        if spec.dtype not in DTYPE_COMPUTE:
            raise ValueError(f"model {spec.id!r}: dtype {spec.dtype!r} is not supported by the faster_whisper backend "
                             f"(use one of {', '.join(DTYPE_COMPUTE)}, or options.compute_type)")
        wanted = DTYPE_COMPUTE[spec.dtype]
        if wanted == "int8" and device == "cuda":
            wanted = "int8_float16"
    if wanted in supported or wanted in ("default", "auto"):
        return wanted
    fallback = "int8" if device == "cpu" else "float32"
    log.info("model %s: compute type %s is not supported on %s (supported: %s); using %s",
             spec.id, wanted, device, ", ".join(sorted(supported)), fallback)
    return fallback


class FasterWhisperTranscriber(Backend):
    preload = ("ctranslate2", "faster_whisper")  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        o = spec.options
        self.model: Any = None
        self.batched: Any = None
        self.device = "cpu"
        self.compute_type: str | None = None
        self.max_new_tokens: int | None = o.get("max_new_tokens")
        self.beam_size = int(o.get("beam_size", 5))
        self.chunk_s = float(o.get("chunk_s", DEFAULT_CHUNK_S))
        self.vad_filter = o.get("vad_filter", "auto")
        self.vad_min_s = float(o.get("vad_min_s", DEFAULT_VAD_MIN_S))
        self.batch_size = int(o.get("batch_size", 1))
        self.condition_on_previous_text = bool(o.get("condition_on_previous_text", False))
        self.compression_ratio_threshold = _optional_float(o, "compression_ratio_threshold",
                                                          DEFAULT_COMPRESSION_RATIO_THRESHOLD)
        self.log_prob_threshold = _optional_float(o, "log_prob_threshold", DEFAULT_LOG_PROB_THRESHOLD)
        self.no_speech_threshold = _optional_float(o, "no_speech_threshold", DEFAULT_NO_SPEECH_THRESHOLD)
        self.drop_repeats = bool(o.get("drop_repeats", True))
        self.repeat_window = int(o.get("repeat_window", DEFAULT_WINDOW))
        self.repeat_min_words = int(o.get("repeat_min_words", DEFAULT_MIN_WORDS))
        self.temperature_fallback = bool(o.get("temperature_fallback", True))
        self.without_timestamps = bool(o.get("without_timestamps", False))
        if self.vad_filter not in ("auto", True, False):
            raise ValueError(f"model {spec.id!r}: options.vad_filter must be auto, true or false, not {self.vad_filter!r}")

    def load(self) -> str:
        import ctranslate2
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        spec = self.spec
        index = int(spec.device.split(":")[1]) if ":" in spec.device else 0
        device = "cuda" if spec.wants_gpu and ctranslate2.get_cuda_device_count() > index else "cpu"
        compute_type = compute_type_for(spec, device, set(ctranslate2.get_supported_compute_types(device)))
        local = os.path.isdir(spec.source)
        if not local:
            log.info("model %s: loading %s (downloaded into %s on first use)", spec.id, spec.source, self.cache_dir)
        self.model = WhisperModel(
            spec.source, device=device, device_index=index if device == "cuda" else 0, compute_type=compute_type,
            cpu_threads=int(spec.options.get("cpu_threads", 0)), download_root=None if local else self.cache_dir,
            local_files_only=local,
        )
        if self.batch_size > 1:
            self.batched = BatchedInferencePipeline(model=self.model)
        ct2 = self.model.model  # ctranslate2.models.Whisper: where it really runs, in what precision
        self.compute_type = ct2.compute_type
        self.device = f"cuda:{ct2.device_index[0]}" if ct2.device == "cuda" else "cpu"
        log.info("model %s: CTranslate2 on %s, compute type %s", spec.id, self.device, self.compute_type)
        return self.device

    def warmup(self) -> None:
        import numpy as np

        t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
        tone = (3000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
        [result] = self.infer([TranscribeItem(audio=tone, language=None if self.model.model.is_multilingual else "en")])
        if not isinstance(result["text"], str):
            raise RuntimeError(f"warm-up produced {result!r}, not a transcript")

    def infer(self, items: list[TranscribeItem]) -> list[dict[str, Any]]:
        return [self._transcribe(item) for item in items]

    def _transcribe(self, item: TranscribeItem) -> dict[str, Any]:
        language = item.language
        segments: list[dict[str, Any]] = []
        words: list[list[dict[str, Any]]] = []  # per segment
        for index, (start, end) in enumerate(chunk_bounds(item.audio, max_chunk_s=self.chunk_s)):
            audio = to_float32(item.audio[start:end])
            options = self._options(item, language, first=index == 0, duration_s=(end - start) / SAMPLE_RATE)
            engine = self.batched if self.batched is not None and options["vad_filter"] else self.model
            if engine is self.batched:
                options["batch_size"] = self.batch_size
            found, info = engine.transcribe(audio, **options)
            offset, length = start / SAMPLE_RATE, (end - start) / SAMPLE_RATE
            for s in found:  # decoding happens here, lazily, one window at a time
                if not s.text.strip():
                    continue  # a window decoded to nothing but timestamps
                segments.append(_segment(len(segments), s, offset, length))
                words.append([{"word": w.word, "start": _at(w.start, offset, length), "end": _at(w.end, offset, length),
                               "probability": round(float(w.probability), 4)} for w in s.words or ()])
            language = language or info.language
        if self.drop_repeats if item.drop_repeats is None else item.drop_repeats:
            for segment, found_words in zip(segments, words):
                segment["words"] = found_words  # ride along, so a dropped segment takes its words with it
            segments, dropped = drop_repeats(segments, window=self.repeat_window, min_words=self.repeat_min_words)
            if dropped:
                log.info("model %s: dropped %d repeated segment(s)", self.spec.id, dropped)
            words = [segment.pop("words") for segment in segments]
        return {
            "text": join_text([s["text"] for s in segments]),
            "language": language,
            "duration": ms(item.duration_s),
            "segments": segments,
            "words": [w for found_words in words for w in found_words] if item.word_timestamps else None,
        }

    def _options(self, item: TranscribeItem, language: str | None, *, first: bool, duration_s: float) -> dict[str, Any]:
        if item.temperature:
            temperature: float | tuple[float, ...] = item.temperature
        else:
            temperature = FALLBACK_TEMPERATURES if self.temperature_fallback else 0.0
        if item.vad_filter is not None:
            vad = item.vad_filter
        else:
            vad = duration_s > self.vad_min_s if self.vad_filter == "auto" else bool(self.vad_filter)
        condition = self.condition_on_previous_text if item.condition_on_previous_text is None \
            else item.condition_on_previous_text
        options: dict[str, Any] = {
            "task": item.task,
            "language": language,
            "temperature": list(temperature) if isinstance(temperature, tuple) else temperature,
            "initial_prompt": item.prompt if first else None,
            "word_timestamps": item.word_timestamps,
            "condition_on_previous_text": condition,
            "compression_ratio_threshold": self.compression_ratio_threshold,
            "log_prob_threshold": self.log_prob_threshold,
            "no_speech_threshold": self.no_speech_threshold,
            "beam_size": self.beam_size,
            "vad_filter": vad,
            "without_timestamps": self.without_timestamps,
        }
        if self.max_new_tokens is not None:
            options["max_new_tokens"] = int(self.max_new_tokens)
        return options

    can_park = True  # CTranslate2: unload_model(to_cpu=True) keeps the weights in host memory, load_model() copies back

    def park(self) -> int | None:
        self.model.model.unload_model(to_cpu=True)
        return None  # CTranslate2 does not say how much: the worker measures its resident set's growth

    def unpark(self) -> None:
        self.model.model.load_model()

    def close(self) -> None:
        # CTranslate2 frees its device memory when the model object goes; the worker collects garbage
        # after close(), and ends (taking the CUDA context with it) when this was its last model.
        self.batched = None
        self.model = None


def _optional_float(options: dict[str, Any], key: str, default: float) -> float | None:
    """A threshold from the catalog's options: its value, ``default`` when not set, ``None`` (the check off)
    when set to null."""
    value = options.get(key, default)
    return None if value is None else float(value)


def _at(t: float, offset: float, length: float) -> float:
    """A time inside a chunk → seconds from the start of the audio, clamped to the chunk: Whisper's timestamp
    tokens can point past the end of the audio (into the padding of the last 30 s window)."""
    return ms(offset + min(max(float(t), 0.0), length))


def _segment(index: int, s: Any, offset: float, length: float) -> dict[str, Any]:
    return {
        "id": index,
        "seek": int(s.seek) + round(offset * 100),
        "start": _at(s.start, offset, length),
        "end": _at(s.end, offset, length),
        "text": s.text,
        "tokens": [int(t) for t in s.tokens],
        "temperature": float(s.temperature if s.temperature is not None else 0.0),
        "avg_logprob": float(s.avg_logprob),
        "compression_ratio": float(s.compression_ratio),
        "no_speech_prob": float(s.no_speech_prob),
    }
