"""flite (CMU Flite, Debian's ``flite`` package): small real voices compiled into the binary.

Offline and CPU-only: nothing to download. Each sentence runs the ``flite`` binary once (a few ms of
process start, beside tens of ms of synthesis), reading the text from a file so that no text is ever
taken for an option. Speed is flite's own ``duration_stretch`` (1/speed). flite reads English only: text
is folded to ASCII first (accents dropped, other scripts and emoji removed), so it never sees bytes it
would mis-read.

Catalog: ``source`` names the binary (``flite``, or a path); ``voices`` may restrict the list.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import unicodedata
import wave
from pathlib import Path

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import SpeechAudio, SpeechItem
from ..voices import flite_voices


class FliteSynthesizer(Backend):
    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.binary: str | None = None
        self.voices: tuple[str, ...] = ()
        self._tmp: tempfile.TemporaryDirectory | None = None

    def load(self) -> str:
        self.binary = shutil.which(self.spec.source)
        if self.binary is None:
            raise RuntimeError(f"the flite binary {self.spec.source!r} is not installed (Debian: apt-get install flite)")
        self.voices = flite_voices(self.spec.source)
        if not self.voices:
            raise RuntimeError(f"{self.binary} lists no voices")
        self._tmp = tempfile.TemporaryDirectory(prefix="flite-")
        return "cpu"

    def warmup(self) -> None:
        [audio] = self.infer([SpeechItem(text="Hello.", voice="slt" if "slt" in self.voices else self.voices[0])])
        if audio.duration_s <= 0:
            raise RuntimeError("flite produced no audio for 'Hello.'")

    def infer(self, items: list[SpeechItem]) -> list[SpeechAudio]:
        return [self._speak(item) for item in items]

    def _speak(self, item: SpeechItem) -> SpeechAudio:
        if item.voice not in self.voices:
            raise ValueError(f"flite has no voice {item.voice!r}")
        assert self._tmp is not None and self.binary is not None
        text = ascii_text(item.text)
        tmp = Path(self._tmp.name)
        txt, wav = tmp / "in.txt", tmp / "out.wav"
        txt.write_text(text + "\n", encoding="ascii")
        subprocess.run(
            [self.binary, "-voice", item.voice, "--setf", f"duration_stretch={1.0 / item.speed:.4f}", "-f", str(txt), "-o", str(wav)],
            check=True, capture_output=True, timeout=120,
        )
        with wave.open(str(wav), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise RuntimeError(f"flite wrote {w.getnchannels()} channel(s) of {8 * w.getsampwidth()} bits, not mono s16")
            return SpeechAudio(pcm=w.readframes(w.getnframes()), sample_rate=w.getframerate())

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def ascii_text(text: str) -> str:
    """Accents dropped (é → e), typographic quotes and dashes made plain, everything else non-ASCII
    removed."""
    text = text.translate({0x2018: "'", 0x2019: "'", 0x201C: '"', 0x201D: '"', 0x2013: "-", 0x2014: ", ", 0x2026: "..."})
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.split())
