"""The tiny embed models (tools/make_tiny_embed_models.py), built once per session with this environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_embed_models.py"), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    return out
