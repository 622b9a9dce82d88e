"""Piper (``piper-tts``): VITS voices exported to ONNX, run by onnxruntime; phonemes from the espeak-ng
built into the wheel.

Catalog: ``source`` is a local ``.onnx`` (its ``.onnx.json`` beside it) or a voice id such as
``en_US-lessac-medium``, downloaded on first load (or ahead, by a pull) into ``<cache_dir>/piper`` from
Piper's voice repository on the hub (``HF_ENDPOINT``). ``device: cuda:N`` runs the ONNX session with the
CUDA provider (onnxruntime-gpu); the device reported is read back from the session's providers, so a CPU-only onnxruntime is reported
honestly. Options: ``voice`` (the id of a single-speaker voice, default ``default``), ``noise_scale``,
``noise_w_scale``, ``threads`` (onnxruntime's intra-op threads, without spin-waiting; default: its own, one
per core, spinning: fastest on an idle machine, worst on a small one shared with the HTTP process and the
gateway). Multi-speaker voices list their speakers as voices.

Speed is Piper's own ``length_scale`` (the voice's own scale / speed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modelhost import pull_urls
from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import SpeechAudio, SpeechItem
from ..voices import piper_model_path, voices_for

log = logging.getLogger(__name__)


class PiperSynthesizer(Backend):
    preload = ("onnxruntime", "piper")  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.voice: Any = None
        self.speakers: dict[str, int | None] = {}
        self.length_scale = 1.0

    def load(self) -> str:
        from piper import PiperVoice

        model = piper_model_path(self.spec.source, self.cache_dir)
        if not model.exists():
            self._download(model)
        self.voice = PiperVoice.load(model, use_cuda=self.spec.wants_gpu, download_dir=model.parent)
        threads = self.spec.options.get("threads")
        if threads:  # the same session, made again with bounded threads (PiperVoice.load takes no options)
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.voice.session = onnxruntime.InferenceSession(
                str(model), sess_options=options, providers=self.voice.session.get_providers())
        speaker_map = self.voice.config.speaker_id_map or {}
        ids = [v.id for v in voices_for(self.spec, self.cache_dir)]
        self.speakers = {v: (speaker_map[v] if len(speaker_map) > 1 else None) for v in ids}
        self.length_scale = float(self.voice.config.length_scale or 1.0)
        providers = self.voice.session.get_providers()
        return self.spec.device if "CUDAExecutionProvider" in providers and self.spec.wants_gpu else "cpu"

    def _download(self, model: Path) -> None:
        """The voice's files, as a pull fetches them (``modelhost.pull_urls``: the same URLs on HF_ENDPOINT, the
        same place, renamed in only when complete)."""
        if self.spec.source.endswith(".onnx"):
            raise FileNotFoundError(f"Piper voice {model} does not exist")
        files = pull_urls.piper_voice_files(self.spec.source, pull_urls.hub_endpoint(), model.parent)
        if files is None:
            raise ValueError(f"model {self.spec.id}: source {self.spec.source!r} is neither a .onnx file nor a Piper "
                             "voice id like en_US-lessac-medium")
        if pull_urls.hub_offline():
            raise FileNotFoundError(f"Piper voice {model} is not in the cache and HF_HUB_OFFLINE is set")
        log.info("downloading Piper voice %s into %s", self.spec.source, model.parent)
        pull_urls.fetch(files, on_total=lambda _n: None, on_bytes=lambda _n: None)

    def warmup(self) -> None:
        [audio] = self.infer([SpeechItem(text="Hello world.", voice=next(iter(self.speakers)))])
        if audio.duration_s <= 0:
            raise RuntimeError("Piper produced no audio for 'Hello world.'")

    def infer(self, items: list[SpeechItem]) -> list[SpeechAudio]:
        return [self._speak(item) for item in items]

    def _speak(self, item: SpeechItem) -> SpeechAudio:
        from piper import SynthesisConfig

        if item.voice not in self.speakers:
            raise ValueError(f"voice {item.voice!r} is not one of this model's voices")
        opts = self.spec.options
        config = SynthesisConfig(
            speaker_id=self.speakers[item.voice],
            length_scale=self.length_scale / item.speed,
            noise_scale=opts.get("noise_scale"),
            noise_w_scale=opts.get("noise_w_scale"),
        )
        chunks = list(self.voice.synthesize(item.text, syn_config=config))
        pcm = b"".join(c.audio_int16_bytes for c in chunks)
        return SpeechAudio(pcm=pcm, sample_rate=int(self.voice.config.sample_rate))

    def close(self) -> None:
        self.voice = None
