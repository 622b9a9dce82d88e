"""What the asr-svc tests share: the tiny models built once per session, speech made by flite, and
audio encoded in memory in any container (PyAV's own encoders: no ffmpeg binary, no files on disk)."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from modelhost.catalog import Catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]
SR = 16000

# Sentences flite's slt voice says and pocketsphinx's shipped en-US model hears word for word.
SENTENCES = [
    "hello world this is a test",
    "one two three four five",
    "the quick brown fox jumps over the lazy dog",
    "please turn on the kitchen lights",
    "what time is it",
    "the weather is nice today",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_asr_models.py"), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def tiny_catalog(tiny_dir: Path) -> Catalog:
    return load_catalog(tiny_dir / "catalog.yaml")


class AudioKit:
    """Audio for tests: speech from flite, tones, any container encoded in memory."""

    @staticmethod
    def flite_wav(text: str, voice: str = "slt") -> bytes:
        """A WAV file of ``text`` spoken by Debian's flite (slt: a 16 kHz female voice)."""
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            subprocess.run(["flite", "-voice", voice, "-t", text, "-o", f.name], check=True, timeout=60)
            return Path(f.name).read_bytes()

    @staticmethod
    def pcm16(data: bytes) -> np.ndarray:
        """Any audio file → 16 kHz mono int16, through the service's own decoder."""
        from asr_svc.audio import decode_audio

        return decode_audio(data, max_bytes=1 << 30, max_duration_s=24 * 3600, silence_dbfs=-60).pcm

    @staticmethod
    def tone(seconds: float, freq: float = 440.0, rate: int = SR, amplitude: float = 0.3, channels: int = 1) -> np.ndarray:
        """float32 samples shaped (channels, n)."""
        t = np.arange(int(seconds * rate)) / rate
        x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        return np.repeat(x[None, :], channels, axis=0)

    # container → (PyAV format, codec, sample format, encoder rate). FFmpeg's own Vorbis encoder takes stereo only.
    ENCODINGS = {
        "wav": ("wav", "pcm_s16le", "s16", 22050),
        "flac": ("flac", "flac", "s16", 44100),
        "mp3": ("mp3", "libmp3lame", "fltp", 44100),
        "ogg": ("ogg", "vorbis", "fltp", 44100),
        "opus": ("ogg", "libopus", "flt", 48000),
        "m4a": ("ipod", "aac", "fltp", 44100),
        "webm": ("webm", "libopus", "flt", 48000),
    }

    @staticmethod
    def encode(samples: np.ndarray, rate: int, container: str) -> bytes:
        """float32 samples (channels, n) at ``rate`` → a file in ``container`` (a key of ENCODINGS), in memory."""
        import av

        fmt, codec, sample_fmt, out_rate = AudioKit.ENCODINGS[container]
        channels = samples.shape[0]
        layout = "mono" if channels == 1 else "stereo"
        buf = io.BytesIO()
        with av.open(buf, mode="w", format=fmt) as out:
            stream = out.add_stream(codec, rate=out_rate, layout=layout)
            stream.time_base = Fraction(1, out_rate)
            if codec == "vorbis":  # FFmpeg's own Vorbis encoder (the wheel has no libvorbis) is "experimental"
                stream.codec_context.options = {"strict": "experimental"}
            resampler = av.AudioResampler(format=sample_fmt, layout=layout, rate=out_rate)
            step = 4096
            pts = 0
            for i in range(0, samples.shape[1], step):
                block = np.ascontiguousarray(samples[:, i:i + step], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
                frame.sample_rate = rate
                for f in resampler.resample(frame):
                    f.pts = pts
                    pts += f.samples
                    out.mux(stream.encode(f))
            for f in resampler.resample(None):
                f.pts = pts
                pts += f.samples
                out.mux(stream.encode(f))
            out.mux(stream.encode(None))
        return buf.getvalue()


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture(scope="session")
def kit() -> type[AudioKit]:
    return AudioKit


@pytest.fixture(scope="session")
def speech() -> Callable[[str], bytes]:
    """``speech(text)`` → WAV bytes spoken by flite, cached per text for the session."""
    cache: dict[str, bytes] = {}

    def make(text: str) -> bytes:
        if text not in cache:
            cache[text] = AudioKit.flite_wav(text)
        return cache[text]

    return make


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word-level Levenshtein distance over the reference length: (substitutions + deletions + insertions) / N."""
    d = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        prev, d[0] = d[0], i
        for j, hyp in enumerate(hypothesis, start=1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref != hyp))
    return d[len(hypothesis)] / max(1, len(reference))


@pytest.fixture(scope="session")
def wer() -> Callable[[list[str], list[str]], float]:
    return word_error_rate
