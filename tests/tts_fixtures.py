"""Session fixtures of the tts proc tests: the tiny TTS catalog (the real Piper joe voice, tiny Piper, tiny
VITS, flite, espeak-ng), built with the tts environment, and a real tts-svc and gateway on loopback. Import
the fixtures you use into a test module: ``from tests.tts_fixtures import tts_catalog, tts_svc, tts_gateway``."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests import procs

TTS_MAX_INPUT_CHARS = 1000
VOICES = {"piper-joe": "joe", "tiny-piper": "tiny", "tiny-vits": "tiny", "flite": "slt", "espeak-ng": "en-us"}


def build_tiny_tts_models(out: Path) -> Path:
    """Build the tiny TTS models with the tts environment; returns the catalog path."""
    subprocess.run([str(procs.TTS_PY), str(procs.ROOT / "tools" / "make_tiny_tts_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=300)
    return out / "catalog.yaml"


@pytest.fixture(scope="session")
def tts_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tts_models(tmp_path_factory.mktemp("tiny-tts-models"))


@pytest.fixture(scope="session")
def tts_svc(tts_catalog: Path, logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_tts_svc(tts_catalog, logdir)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def tts_gateway(tts_catalog: Path, tts_svc: procs.Proc, logdir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    p = procs.start_gateway(tts_catalog, {"tts": tts_svc.url}, logdir, name="tts-gateway",
                            tts_max_input_chars=str(TTS_MAX_INPUT_CHARS),
                            data_dir=str(tmp_path_factory.mktemp("tts-gateway-data")))
    yield p
    p.stop()


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Audio in any container PyAV reads → mono float32 samples and their rate."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        chunks = [f.to_ndarray().reshape(-1) for frame in container.decode(stream) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        rate = stream.rate
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
