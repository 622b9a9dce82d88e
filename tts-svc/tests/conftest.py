"""Fixtures of the tts-svc tests: the tiny TTS models and catalog, built once per session with
tools/make_tiny_tts_models.py (tiny Piper voice, tiny Coqui VITS, plus flite and espeak-ng, whose real
voices ship with Debian's flite and the espeakng-loader wheel). Nothing is downloaded."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelhost.catalog import Catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tts_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-tts-models")
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_tts_models.py"), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    return out


@pytest.fixture(scope="session")
def tts_catalog(tts_models_dir: Path) -> Catalog:
    return load_catalog(tts_models_dir / "catalog.yaml")


@pytest.fixture(scope="session")
def decode():  # noqa: ANN201 - a function
    """Any of our formats but raw pcm → mono float32 samples and their rate, with PyAV."""
    return decode_audio


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(stream) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate
