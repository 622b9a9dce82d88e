"""Coqui TTS (the maintained ``coqui-tts`` fork, 0.28): VITS models and XTTS-v2.

Catalog ``source``:

* a Coqui model name (``tts_models/en/ljspeech/vits``, ``tts_models/multilingual/multi-dataset/xtts_v2``),
  downloaded on first load into ``<cache_dir>/coqui`` (``TTS_HOME``). XTTS-v2's weights are under the
  Coqui Public Model License: its download needs ``COQUI_TOS_AGREED=1`` in the service's environment,
  set by the user who accepts it;
* a local checkpoint ``.../model.pth`` with ``config.json`` beside it (or the ``config_path`` option);
* a local model directory holding ``model.pth`` and ``config.json`` (an XTTS-v2 download, for one).

Voices: a single-speaker model has one voice (the ``voice`` option, default ``default``); a multi-speaker
one (XTTS-v2's studio speakers, VCTK) has the speakers the catalog's ``voices`` option names. Language: the
request's, else the ``language`` option, for multilingual models only.

Speed: VITS's ``length_scale`` (its configured scale / speed), XTTS-v2's own ``speed`` argument. Other
architectures ignore it natively, so the backend time-stretches their output instead.

Sentences are split by the service; Coqui's own splitter is turned off (``split_sentences=False``) so one
item is one forward pass.

Option ``torch_threads``: torch's intra-op threads in the worker (default: torch's own, one per core). On
a small CPU shared with the service's HTTP process and the gateway, 1 is steadier: with 2 threads on 2
busy cores one tiny-VITS sentence took 0.1 to 1.3 s, with 1 thread 0.17 to 0.26 s (bench/README.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from modelhost.backend import Backend, torch_device
from modelhost.catalog import ModelSpec

from ..items import SpeechAudio, SpeechItem
from ..voices import voices_for
from ._audio import change_tempo, float_to_pcm16

log = logging.getLogger(__name__)


class CoquiSynthesizer(Backend):
    preload = ("torch", "TTS.api")  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.tts: Any = None
        self.device = "cpu"
        self.sample_rate = 0
        self.voices: dict[str, str | None] = {}
        self.language: str | None = spec.options.get("language")
        self.multilingual = False
        self.model_kind = ""
        self.base_length_scale: float | None = None

    def load(self) -> str:
        os.environ.setdefault("TTS_HOME", str(Path(self.cache_dir, "coqui")))
        from TTS.api import TTS

        # Coqui logs every sentence's text and timings at INFO: keep its warnings only.
        logging.getLogger("TTS").setLevel(logging.WARNING)

        threads = self.spec.options.get("torch_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        device = torch_device(self.spec)
        source = self.spec.source
        if source.startswith("tts_models/"):
            tts = TTS(model_name=source, progress_bar=False)
        else:
            model_path, config_path = _local_paths(source, self.spec.options.get("config_path"))
            tts = TTS(model_path=str(model_path), config_path=str(config_path), progress_bar=False)
        self.tts = tts.to(device)
        model = self.tts.synthesizer.tts_model
        self.model_kind = type(model).__name__.lower()
        self.sample_rate = int(self.tts.synthesizer.output_sample_rate)
        self.multilingual = bool(self.tts.is_multi_lingual)
        if self.multilingual and self.language is None:
            self.language = (self.tts.languages or ["en"])[0]
        multi_speaker = bool(self.tts.is_multi_speaker)
        self.voices = {v.id: (v.id if multi_speaker else None) for v in voices_for(self.spec, self.cache_dir)}
        if hasattr(model, "length_scale"):
            self.base_length_scale = float(model.length_scale)
        try:
            self.device = str(next(model.parameters()).device)
        except StopIteration:  # pragma: no cover - every Coqui model has parameters
            self.device = device
        return self.device

    def warmup(self) -> None:
        [audio] = self.infer([SpeechItem(text="Hello world.", voice=next(iter(self.voices)))])
        if audio.duration_s <= 0:
            raise RuntimeError("Coqui produced no audio for 'Hello world.'")

    def infer(self, items: list[SpeechItem]) -> list[SpeechAudio]:
        return [self._speak(item) for item in items]

    def _speak(self, item: SpeechItem) -> SpeechAudio:
        import torch

        if item.voice not in self.voices:
            raise ValueError(f"voice {item.voice!r} is not one of this model's voices")
        kwargs: dict[str, Any] = {"speaker": self.voices[item.voice], "split_sentences": False}
        if self.multilingual:
            kwargs["language"] = item.language or self.language
        stretch = 1.0
        model = self.tts.synthesizer.tts_model
        if "xtts" in self.model_kind:
            kwargs["speed"] = item.speed
        elif self.base_length_scale is not None:
            model.length_scale = self.base_length_scale / item.speed
        else:
            stretch = item.speed
        if not self._has_tokens(item.text, kwargs.get("language")):
            return SpeechAudio(pcm=b"", sample_rate=self.sample_rate)  # nothing this model can pronounce
        with torch.inference_mode():
            wav = self.tts.tts(text=item.text, **kwargs)
        pcm = float_to_pcm16(wav)
        return SpeechAudio(pcm=change_tempo(pcm, self.sample_rate, stretch), sample_rate=self.sample_rate)

    def _has_tokens(self, text: str, language: str | None) -> bool:
        """Whether the model's tokenizer keeps any symbol of ``text`` (a grapheme model drops the
        characters outside its alphabet, and an empty input crashes its encoder)."""
        tokenizer = getattr(self.tts.synthesizer.tts_model, "tokenizer", None)
        if tokenizer is None or not hasattr(tokenizer, "text_to_ids"):
            return True
        try:
            ids = tokenizer.text_to_ids(text, language=language)
        except TypeError:
            ids = tokenizer.text_to_ids(text)
        blank = getattr(tokenizer, "characters", None)
        specials = {getattr(blank, "pad_id", None), getattr(blank, "blank_id", None),
                    getattr(blank, "bos_id", None), getattr(blank, "eos_id", None)} if blank is not None else set()
        return any(i not in specials for i in ids)

    def close(self) -> None:
        on_gpu = self.device.startswith("cuda")
        self.tts = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


def _local_paths(source: str, config_option: str | None) -> tuple[Path, Path]:
    path = Path(source)
    if path.is_dir():
        return path, Path(config_option) if config_option else path / "config.json"
    return path, Path(config_option) if config_option else path.parent / "config.json"
