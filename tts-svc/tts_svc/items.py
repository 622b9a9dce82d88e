"""What a TTS backend receives and returns, shared by the HTTP side and the worker.

One item is one sentence: the HTTP side splits the input (``sentences.py``) and submits the sentences as
separate items, so each one's audio can be encoded and streamed as soon as it is made. Items cross the
process boundary pickled, so this module imports nothing heavy.

A backend returns one ``SpeechAudio`` per item: mono 16-bit PCM at the model's own sample rate. ``speed``
is applied by the backend itself, natively where the engine has a rate control.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechItem:
    text: str
    """One sentence, with at least one letter or digit."""
    voice: str
    """A voice id the model lists (``voices.py``)."""
    speed: float = 1.0
    """1.0 is the voice's natural rate; 2.0 twice as fast (0.25 to 4.0)."""
    language: str | None = None
    """For multilingual models (XTTS-v2); None means the model's default language."""


@dataclass(frozen=True)
class SpeechAudio:
    pcm: bytes
    """Mono signed 16-bit little-endian samples; may be empty for a sentence with nothing to say."""
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate
