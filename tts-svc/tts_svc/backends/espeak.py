"""espeak-ng through its C library, as shipped by the ``espeakng-loader`` wheel (the library and its voice
data; no Debian package, no download). Formant synthesis: robotic, but ~100 languages and very fast.

The library keeps global state (one voice, one rate, one callback per process), so every synthesis
holds a process-wide lock; several espeak catalog models in one worker share the library safely.
Speed maps to espeak's words-per-minute rate (``wpm`` option × speed, default 175); past the library's
range (80 to 450 wpm) the rest is made with a pitch-keeping time stretch.

Catalog: ``source: espeakng-loader``; options ``wpm``, ``voices`` (restrict the list), ``data_path``.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import SpeechAudio, SpeechItem
from ..voices import espeak_data_path, voices_for
from ._audio import change_tempo

MIN_WPM, MAX_WPM = 80, 450
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE = 1
POS_CHARACTER = 1
ESPEAK_CHARS_UTF8 = 1
EE_OK = 0

_LOCK = threading.Lock()
_LIB: "_Espeak | None" = None


class _Espeak:
    """The library, initialised once per process."""

    CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self, library: str, data_path: str) -> None:
        lib = ctypes.CDLL(library)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [self.CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}) with data at {data_path}")
        self._chunks: list[np.ndarray] = []

        def collect(wav: Any, n: int, events: Any) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = self.CALLBACK(collect)  # kept referenced: the library holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def synth(self, text: str, voice: str, wpm: int) -> bytes:
        """Caller holds ``_LOCK``."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != EE_OK:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, wpm, 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        if self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None) != EE_OK:
            raise RuntimeError("espeak_Synth failed")
        self.lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks).astype("<i2").tobytes() if chunks else b""


def _library(data_path: str | None) -> _Espeak:
    global _LIB
    if _LIB is None:
        import espeakng_loader

        _LIB = _Espeak(str(espeakng_loader.get_library_path()), data_path or espeak_data_path())
    return _LIB


class EspeakSynthesizer(Backend):
    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.wpm = int(spec.options.get("wpm", 175))
        self.voices: set[str] = set()
        self.engine: _Espeak | None = None

    def load(self) -> str:
        if self.spec.source != "espeakng-loader":
            raise ValueError(f"espeak source must be 'espeakng-loader' (the pip-shipped library), not {self.spec.source!r}")
        with _LOCK:
            self.engine = _library(self.spec.options.get("data_path"))
        self.voices = {v.id for v in voices_for(self.spec)}
        return "cpu"

    def warmup(self) -> None:
        voice = "en-us" if "en-us" in self.voices else sorted(self.voices)[0]
        [audio] = self.infer([SpeechItem(text="Hello.", voice=voice)])
        if audio.duration_s <= 0:
            raise RuntimeError("espeak-ng produced no audio for 'Hello.'")

    def infer(self, items: list[SpeechItem]) -> list[SpeechAudio]:
        return [self._speak(item) for item in items]

    def _speak(self, item: SpeechItem) -> SpeechAudio:
        assert self.engine is not None
        if item.voice not in self.voices:
            raise ValueError(f"espeak-ng has no voice {item.voice!r} here")
        wanted = self.wpm * item.speed
        wpm = int(round(min(MAX_WPM, max(MIN_WPM, wanted))))
        with _LOCK:
            pcm = self.engine.synth(item.text, item.voice, wpm)
        return SpeechAudio(pcm=change_tempo(pcm, self.engine.sample_rate, wanted / wpm), sample_rate=self.engine.sample_rate)

    def close(self) -> None:
        self.engine = None  # the library stays initialised for the process (it cannot be unloaded)
