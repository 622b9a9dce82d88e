"""Fixtures for the embed proc tests (imported by tests/test_embed_proc.py): the tiny embed models built with the
embed environment, and embed-svc as a real process on loopback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from tests import procs

EMBED_PY = Path(os.environ.get("EMBED_PY", procs.VENVS / "embed-svc" / "bin" / "python"))
MAX_UPLOAD_BYTES = 200_000


def build_tiny_embed_models(out: Path) -> Path:
    """Tiny CLIP, SigLIP and a multilingual text tower, and their catalog (with the embed environment)."""
    subprocess.run([str(EMBED_PY), str(procs.ROOT / "tools" / "make_tiny_embed_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=300)
    return out / "catalog.yaml"


def start_embed_svc(catalog: Path, logdir: Path, **settings: str) -> procs.Proc:
    port = procs.free_port()
    env = {"EMBED_SVC_CATALOG": str(catalog), "EMBED_SVC_PORT": str(port), "EMBED_SVC_LOG_LEVEL": "INFO"}
    env.update({f"EMBED_SVC_{k.upper()}": v for k, v in settings.items()})
    return procs.start("embed-svc", [str(EMBED_PY), "-m", "embed_svc"], env, port, logdir)


@pytest.fixture(scope="session")
def embed_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embed_models(tmp_path_factory.mktemp("tiny-embed-models"))


@pytest.fixture(scope="session")
def embed_svc(embed_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    p = start_embed_svc(embed_catalog, tmp_path_factory.mktemp("embed-logs"), max_upload_bytes=str(MAX_UPLOAD_BYTES))
    yield p
    p.stop()


def photo(seed: int, fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> bytes:
    """A picture of two colours split at a place that depends on ``seed``."""
    image = Image.new("RGB", size, (20 * seed % 256, 80, 160))
    image.paste((250, 200 - 10 * seed % 200, 30), (0, 0, size[0] * (seed % 5 + 1) // 6, size[1]))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()
