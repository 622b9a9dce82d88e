"""The ``real`` tier for faces: real pretrained weights shipped in packages, on real photos shipped in
packages (real_photos.py says where each comes from).

- yunet-sface (the catalog's first face model, `make dev`'s default) counts every face of every photo,
  the six of insightface's group photo included;
- it finds the cameraman, seen in three-quarter profile, whom dlib's HOG detector (dlib-resnet) misses;
- through the service's own HTTP API, verify says "same" for three pairs of different photos of one person
  and "different" for seven pairs of two people, with a margin from the threshold; the six people of the
  group photo are told apart pairwise.

Thresholds are the catalog's (yunet-sface: 0.363, OpenCV's documented cut-off for SFace). Measured
(bench/faces_real.py, README): same-person pairs 0.72-0.80, different people at most 0.26, i.e. 0.36 above
and 0.10 below the threshold; asserted: at least 0.25 above and 0.05 below.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from face_svc.backends import BACKENDS
from face_svc.config import FaceSettings
from face_svc.items import DetectItem
from face_svc.main import create_app
from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog

pytestmark = pytest.mark.real

_spec = importlib.util.spec_from_file_location("real_photos", Path(__file__).with_name("real_photos.py"))
real_photos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_photos)

REAL = "yunet-sface"
DLIB = "dlib-resnet"
SAME_MARGIN = 0.25
DIFFERENT_MARGIN = 0.05


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: real_photos.load(name) for name in real_photos.FACES}


def loaded(catalog: Catalog, model: str) -> Backend:
    b = import_backend(BACKENDS[catalog.get(model).backend])(catalog.get(model), "/nonexistent-cache")
    assert b.load() == "cpu"
    b.warmup()
    return b


@pytest.fixture(scope="module")
def yunet(tiny_catalog: Catalog) -> Iterator[Backend]:
    b = loaded(tiny_catalog, REAL)
    yield b
    b.close()


@pytest.fixture(scope="module")
def client(tiny_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = FaceSettings(catalog=tiny_dir / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"),
                            max_upload_bytes=4_000_000, max_image_pixels=8_000_000)
    with TestClient(create_app(settings)) as c:
        r = c.post(f"/v1/models/{REAL}/load")
        assert r.status_code == 200, r.text
        yield c


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("name", list(real_photos.FACES))
def test_yunet_finds_every_face_of_each_photo(yunet, photos, name: str) -> None:
    [result] = yunet.infer([DetectItem(image=photos[name], max_faces=64)])
    assert result["found"] == real_photos.FACES[name], [f["box"] for f in result["faces"]]
    assert all(f["score"] >= 0.8 for f in result["faces"])


def test_yunet_finds_the_profile_face_that_hog_misses(tiny_catalog: Catalog, yunet, photos) -> None:
    camera = photos["camera"]
    hog = loaded(tiny_catalog, DLIB)
    try:
        [missed] = hog.infer([DetectItem(image=camera, max_faces=5)])
    finally:
        hog.close()
    assert missed["found"] == 0  # dlib's HOG detector is frontal-only
    [found] = yunet.infer([DetectItem(image=camera, max_faces=5)])
    [face] = found["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 180 <= x1 <= 210 and 245 <= x2 <= 275 and 95 <= y1 <= 125 and 180 <= y2 <= 210, face["box"]  # his head


@pytest.mark.parametrize("a,b", real_photos.SAME)
def test_verify_says_same_for_two_photos_of_one_person(client: TestClient, photos, a: str, b: str) -> None:
    body = verify(client, photos[a], photos[b])
    assert body["verdict"] == "same", body
    assert body["similarity"] >= body["threshold"] + SAME_MARGIN, body


@pytest.mark.parametrize("a,b", real_photos.DIFFERENT)
def test_verify_says_different_for_two_people(client: TestClient, photos, a: str, b: str) -> None:
    body = verify(client, photos[a], photos[b])
    assert body["verdict"] == "different", body
    assert body["similarity"] <= body["threshold"] - DIFFERENT_MARGIN, body


def test_the_six_people_of_the_group_photo_are_told_apart(tiny_catalog: Catalog, yunet, photos) -> None:
    threshold = tiny_catalog.get(REAL).options["verify_threshold"]
    [result] = yunet.infer([DetectItem(image=photos["t1"], max_faces=64, embed=True)])
    vectors = [f["embedding"] for f in result["faces"]]
    assert len(vectors) == 6
    worst = max(float(a @ b) for a, b in itertools.combinations(vectors, 2))
    assert worst <= threshold - DIFFERENT_MARGIN


def verify(client: TestClient, a: np.ndarray, b: np.ndarray) -> dict:
    r = client.post("/v1/faces/verify", data={"model": REAL},
                    files={"file_a": ("a.jpg", jpeg(a), "image/jpeg"), "file_b": ("b.jpg", jpeg(b), "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == REAL and body["threshold"] == pytest.approx(0.363)
    return body
