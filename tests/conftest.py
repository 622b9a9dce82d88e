from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from tests import procs


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return procs.build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def caption_svc(tiny_catalog: Path, logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_caption_svc(tiny_catalog, logdir)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def gateway(tiny_catalog: Path, caption_svc: procs.Proc, logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_gateway(tiny_catalog, {"caption": caption_svc.url}, logdir,
                            max_upload_bytes=str(2 * 1024 * 1024), max_image_pixels=str(4_000_000))
    yield p
    p.stop()


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (64, 48), color: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert(color).save(buf, fmt)
    return buf.getvalue()
