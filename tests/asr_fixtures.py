"""Fixtures for the speech-to-text proc tests (imported by tests/test_asr_proc.py): the tiny asr models built
with the asr environment, the asr service and a gateway in front of it as real processes, and speech made
by Debian's flite at test time."""

from __future__ import annotations

import io
import math
import struct
import subprocess
import sys
import tempfile
import wave
from pathlib import Path
from typing import Iterator

import pytest

from tests import procs

# Sentences flite's slt voice says and pocketsphinx's shipped en-US model hears word for word.
SENTENCES = [
    "hello world this is a test",
    "one two three four five",
    "the quick brown fox jumps over the lazy dog",
    "please turn on the kitchen lights",
    "what time is it",
]
MAX_UPLOAD_BYTES = 1_000_000
MAX_AUDIO_S = 30.0


def build_tiny_asr_models(out: Path) -> Path:
    """The tiny Whisper models and the asr catalog entries (with the asr environment); returns the catalog."""
    subprocess.run([str(procs.ASR_PY), str(procs.ROOT / "tools" / "make_tiny_asr_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=300)
    return out / "catalog.yaml"


@pytest.fixture(scope="session")
def asr_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_asr_models(tmp_path_factory.mktemp("tiny-asr-models"))


@pytest.fixture(scope="session")
def asr_logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("asr-logs")


@pytest.fixture(scope="session")
def asr_svc(asr_catalog: Path, asr_logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_asr_svc(asr_catalog, asr_logdir, max_audio_s=str(MAX_AUDIO_S))
    yield p
    p.stop()


@pytest.fixture(scope="session")
def asr_gateway(asr_catalog: Path, asr_svc: procs.Proc, asr_logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_gateway(asr_catalog, {"asr": asr_svc.url}, asr_logdir, name="asr-gateway",
                            max_upload_bytes=str(MAX_UPLOAD_BYTES))
    yield p
    p.stop()


def flite_wav(text: str) -> bytes:
    """``text`` spoken by flite's slt voice: a 16 kHz mono WAV."""
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", f.name], check=True, timeout=60)
        return Path(f.name).read_bytes()


def wav(seconds: float, *, freq: float | None = None, amplitude: float = 0.3, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV: a tone at ``freq``, or digital silence."""
    n = int(seconds * rate)
    if freq is None:
        frames = b"\0\0" * n
    else:
        peak = int(amplitude * 32767)
        frames = b"".join(struct.pack("<h", int(peak * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """(substitutions + deletions + insertions) / words in the reference, by word-level edit distance."""
    d = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        prev, d[0] = d[0], i
        for j, hyp in enumerate(hypothesis, start=1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref != hyp))
    return d[len(hypothesis)] / max(1, len(reference))
