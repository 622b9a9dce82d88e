"""The face backends on CPU: the insightface backend on the tiny insightface-format pack built locally
(tools/make_tiny_face_models.py), and the dlib backend on real photos with the weights that ship in
face_recognition_models.

Everything here is real: ONNX Runtime sessions, dlib's models, the pre- and post-processing. The tiny pack's
weights are made up, so what is checked is the contract the worker relies on, and that our SCRFD/ArcFace
arithmetic is insightface's own (compared with the insightface package on the same models)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from face_svc.backends import BACKENDS, _packs
from face_svc.items import DetectItem, EmbedItem, keep_largest
from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog, ModelSpec
from tests.doubles.file_server import serve_folder

pytestmark = pytest.mark.model

TINY = "tiny-insightface"
DLIB = "dlib-resnet"


def squares(width: int = 320, height: int = 240, at: tuple[tuple[int, int], ...] = ((56, 40),)) -> np.ndarray:
    """White 64 px squares on black at the given top-left corners: the tiny detector's faces."""
    image = np.zeros((height, width, 3), np.uint8)
    for x, y in at:
        image[y:y + 64, x:x + 64] = 255
    return image


def backend(spec: ModelSpec, cache_dir: str = "/nonexistent-cache") -> Backend:
    return import_backend(BACKENDS[spec.backend])(spec, cache_dir)


@pytest.fixture(scope="module")
def tiny(tiny_catalog: Catalog) -> Iterator[Backend]:
    b = backend(tiny_catalog.get(TINY))
    assert b.load() == "cpu"
    b.warmup()
    yield b
    b.close()


@pytest.fixture(scope="module")
def dlib_model(tiny_catalog: Catalog) -> Iterator[Backend]:
    b = backend(tiny_catalog.get(DLIB))
    assert b.load() == "cpu"
    b.warmup()
    yield b
    b.close()


# -- insightface format on the tiny pack ----------------------------------------------------------


def test_tiny_pack_runs_on_cpu_with_the_memory_bounding_session_options(tiny) -> None:
    for session in (tiny.detector.session, tiny.recognizer.session):
        assert session.get_providers() == ["CPUExecutionProvider"]
        options = session.get_session_options()
        assert options.enable_mem_pattern is False
        assert options.enable_cpu_mem_arena is False
    assert tiny.providers == {"detection": ["CPUExecutionProvider"], "recognition": ["CPUExecutionProvider"]}


def test_each_square_is_one_face_with_its_box_score_and_five_landmarks(tiny) -> None:
    [result] = tiny.infer([DetectItem(image=squares(at=((56, 40), (200, 120))), max_faces=10)])
    assert result["found"] == 2 and result["recognition_batch"] == 0
    boxes = sorted(f["box"] for f in result["faces"])
    assert boxes == [[56.0, 40.0, 120.0, 104.0], [200.0, 120.0, 264.0, 184.0]]
    for face in result["faces"]:
        assert face["score"] > 0.999
        x1, y1, x2, y2 = face["box"]
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face["landmarks"]
        assert x1 < lx < nx < rx < x2 and y1 < ly < ny < mly < y2  # eyes, then nose, then mouth, inside the box
        assert mlx < mrx and face["embedding"] is None and face["crop"] is None


def test_image_without_faces_gives_an_empty_list(tiny) -> None:
    [result] = tiny.infer([DetectItem(image=np.full((200, 300, 3), 90, np.uint8), max_faces=10, embed=True)])
    assert result["faces"] == [] and result["found"] == 0


def test_detection_scales_images_to_det_size_and_reports_original_pixels(tiny) -> None:
    # 640x480 with 128 px squares: the detector sees it at 320x240 (det_size 320), squares of 64 px.
    image = np.zeros((480, 640, 3), np.uint8)
    image[80:208, 112:240] = 255
    [result] = tiny.infer([DetectItem(image=image, max_faces=10)])
    assert [f["box"] for f in result["faces"]] == [[112.0, 80.0, 240.0, 208.0]]


def test_max_faces_keeps_that_many_and_found_counts_them_all(tiny) -> None:
    image = squares(at=((8, 8), (104, 8), (200, 8), (8, 120), (104, 120)))
    [result] = tiny.infer([DetectItem(image=image, max_faces=3, embed=True)])
    assert result["found"] == 5 and len(result["faces"]) == 3
    assert all(f["embedding"] is not None for f in result["faces"])


def test_keep_largest_orders_by_area_then_score() -> None:
    def face(side: float, score: float) -> dict:
        return {"box": [0.0, 0.0, side, side], "score": score}

    faces = [face(10, 0.9), face(30, 0.5), face(20, 0.99), face(30, 0.7)]
    assert [(f["box"][2], f["score"]) for f in keep_largest(faces, 3)] == [(30, 0.7), (30, 0.5), (20, 0.99)]


def test_embeddings_are_unit_length_and_crops_are_112_px(tiny) -> None:
    [result] = tiny.infer([DetectItem(image=squares(at=((56, 40), (200, 120))), max_faces=10, embed=True, crops=True)])
    for face in result["faces"]:
        assert face["embedding"].shape == (512,) and face["embedding"].dtype == np.float32
        assert np.linalg.norm(face["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert face["crop"].shape == (112, 112, 3) and face["crop"].dtype == np.uint8


def test_detection_alignment_and_embedding_equal_the_insightface_packages(tiny, tiny_dir: Path) -> None:
    # The same models through insightface's own SCRFD, norm_crop and ArcFaceONNX (it reads BGR).
    import warnings

    from insightface.model_zoo import get_model
    from insightface.utils import face_align

    pack = tiny_dir / "face" / TINY
    det = get_model(str(pack / "det_tiny.onnx"), providers=["CPUExecutionProvider"])
    det.prepare(-1, input_size=(320, 320), det_thresh=0.5)
    rec = get_model(str(pack / "w600k_tiny.onnx"), providers=["CPUExecutionProvider"])
    image = squares(width=320, height=200, at=((24, 24), (152, 88)))
    [ours] = tiny.infer([DetectItem(image=image, max_faces=10, embed=True, crops=True)])
    boxes, kps = det.detect(np.ascontiguousarray(image[:, :, ::-1]))
    theirs = sorted(zip(boxes[:, :4].tolist(), kps.tolist()))
    mine = sorted((f["box"], f["landmarks"], f) for f in ours["faces"])
    assert len(theirs) == len(mine) == 2
    for (box, landmarks), (my_box, my_landmarks, face) in zip(theirs, mine):
        np.testing.assert_allclose(my_box, box, atol=1e-3)
        np.testing.assert_allclose(my_landmarks, landmarks, atol=1e-3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-image 0.26 deprecates what norm_crop calls
            crop_bgr = face_align.norm_crop(np.ascontiguousarray(image[:, :, ::-1]), np.asarray(landmarks, np.float32), 112)
        np.testing.assert_array_equal(face["crop"], crop_bgr[:, :, ::-1])
        embedding = rec.get_feat(crop_bgr).ravel()
        np.testing.assert_allclose(face["embedding"], embedding / np.linalg.norm(embedding), atol=1e-5)


def test_all_faces_of_a_batch_go_through_one_recognition_pass(tiny) -> None:
    two = squares(at=((56, 40), (200, 120)))
    crops = tuple(np.random.RandomState(i).randint(0, 255, (112, 112, 3), dtype=np.uint8) for i in range(3))
    items = [DetectItem(image=two, max_faces=10, embed=True), DetectItem(image=squares(), max_faces=10, embed=True),
             EmbedItem(crops=crops), DetectItem(image=two, max_faces=10)]  # the last asks for no embedding
    before = tiny.recognizer.forward_passes
    results = tiny.infer(items)
    assert tiny.recognizer.forward_passes == before + 1
    assert [r["recognition_batch"] for r in results] == [6, 6, 6, 0]
    assert len(results[2]["embeddings"]) == 3


def test_batch_results_equal_single_item_results(tiny) -> None:
    crops = (np.random.RandomState(7).randint(0, 255, (112, 112, 3), dtype=np.uint8),)
    items = [DetectItem(image=squares(at=((56, 40), (200, 120))), max_faces=10, embed=True),
             EmbedItem(crops=crops), DetectItem(image=squares(at=((104, 88),)), max_faces=10, embed=True)]
    batch = tiny.infer(items)
    singles = [tiny.infer([item])[0] for item in items]
    for b, s in zip(batch, singles):
        got = [f["embedding"] for f in b["faces"]] if "faces" in b else b["embeddings"]
        want = [f["embedding"] for f in s["faces"]] if "faces" in s else s["embeddings"]
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-5)


def test_rec_batch_splits_a_large_batch_into_passes_of_that_size(tiny_catalog: Catalog, tiny) -> None:
    spec = tiny_catalog.get(TINY)
    small = backend(spec.model_copy(update={"options": {**spec.options, "rec_batch": 2}}))
    small.load()
    crops = tuple(np.random.RandomState(i).randint(0, 255, (112, 112, 3), dtype=np.uint8) for i in range(5))
    [result] = small.infer([EmbedItem(crops=crops)])
    assert small.recognizer.forward_passes == 3
    [whole] = tiny.infer([EmbedItem(crops=crops)])
    np.testing.assert_allclose(np.array(result["embeddings"]), np.array(whole["embeddings"]), atol=1e-5)


def test_embedding_a_detect_crop_gives_the_detect_embedding(tiny) -> None:
    [detected] = tiny.infer([DetectItem(image=squares(), max_faces=1, embed=True, crops=True)])
    face = detected["faces"][0]
    [embedded] = tiny.infer([EmbedItem(crops=(face["crop"],))])
    np.testing.assert_allclose(embedded["embeddings"][0], face["embedding"], atol=1e-6)


def test_crops_of_other_sizes_are_resized_to_the_input(tiny) -> None:
    [result] = tiny.infer([EmbedItem(crops=(np.full((150, 150, 3), 200, np.uint8), np.full((64, 80, 3), 10, np.uint8)))])
    assert [v.shape for v in result["embeddings"]] == [(512,), (512,)]


def test_given_box_picks_the_face_it_overlaps_or_none(tiny) -> None:
    image = squares(at=((56, 40), (200, 120)))
    boxes = ((198.0, 118.0, 266.0, 186.0), (0.0, 150.0, 40.0, 230.0))
    [result] = tiny.infer([DetectItem(image=image, max_faces=1, boxes=boxes, embed=True)])
    assert result["faces"][0]["box"] == [200.0, 120.0, 264.0, 184.0]
    assert result["faces"][0]["embedding"] is not None
    assert result["faces"][1] is None and result["found"] == 1


def test_given_box_finds_a_face_too_small_for_the_whole_image(tiny) -> None:
    # 1280x960 is seen at 320x240: the 64 px square shrinks to 16 px and is missed; its region is not.
    image = np.zeros((960, 1280, 3), np.uint8)
    image[40:104, 56:120] = 255
    [whole] = tiny.infer([DetectItem(image=image, max_faces=10)])
    assert whole["faces"] == []
    [boxed] = tiny.infer([DetectItem(image=image, max_faces=1, boxes=((56.0, 40.0, 120.0, 104.0),))])
    face = boxed["faces"][0]
    assert face is not None
    x1, y1, x2, y2 = face["box"]  # the tiny detector's faces are 64 px of its input: here 26 px of the image
    assert 56 <= x1 < x2 <= 120 and 40 <= y1 < y2 <= 104


def test_model_asked_for_cuda_reports_the_device_it_really_got(tiny_catalog: Catalog) -> None:
    import onnxruntime

    b = backend(tiny_catalog.get(TINY).model_copy(update={"device": "cuda:0"}))
    device = b.load()
    try:
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            assert device == "cuda:0"  # where the GPU build is installed and a GPU works
        else:
            assert device == "cpu"
        b.warmup()
    finally:
        b.close()
    assert b.detector is None and b.recognizer is None


def test_unsupported_dtype_fails_load_with_a_clear_message(tiny_catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="dtype 'float16' is not supported"):
        backend(tiny_catalog.get(TINY).model_copy(update={"dtype": "float16"})).load()


def test_onnxruntime_allocation_failures_count_as_out_of_memory(tiny) -> None:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    assert tiny.is_out_of_memory(state.RuntimeException("Failed to allocate memory for requested buffer of size 123"))
    assert tiny.is_out_of_memory(state.Fail("CUDA failure 2: out of memory ; GPU=0"))
    assert tiny.is_out_of_memory(MemoryError())
    assert not tiny.is_out_of_memory(state.InvalidArgument("Got invalid dimensions for input"))
    assert not tiny.is_out_of_memory(ValueError("out of memory"))  # only ORT's own errors are read


# -- where packs come from -------------------------------------------------------------------------


@pytest.fixture
def pack_server(tiny_dir: Path, tmp_path: Path) -> Iterator[tuple[str, list[str], bytes]]:
    """A loopback HTTP server with the tiny pack zipped like insightface's releases; it records requests."""
    root = tmp_path / "www"
    root.mkdir()
    with zipfile.ZipFile(root / "tinypack.zip", "w") as zf:
        for f in sorted((tiny_dir / "face" / TINY).iterdir()):
            zf.write(f, f"tinypack/{f.name}")  # with its folder, as some packs are
    with serve_folder(root) as server:
        yield f"{server.url}/tinypack.zip", server.requests, (root / "tinypack.zip").read_bytes()


def test_pack_name_downloads_into_the_model_cache_once_with_progress(
        tiny_catalog: Catalog, pack_server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url, requests, payload = pack_server
    spec = tiny_catalog.get(TINY).model_copy(update={"id": "tinypack", "source": "tinypack", "options": {
        **tiny_catalog.get(TINY).options, "url": url, "sha256": hashlib.sha256(payload).hexdigest()}})
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="face_svc.backends._packs"):
        b = backend(spec, str(cache))
        assert b.load() == "cpu"
        b.warmup()
    assert sorted(p.name for p in (cache / "insightface" / "tinypack").iterdir()) == ["det_tiny.onnx", "w600k_tiny.onnx"]
    assert f"downloading {url} into {cache / 'insightface' / 'tinypack'}" in caplog.text
    assert "(100%)" in caplog.text and "downloaded tinypack: 2 model file(s)" in caplog.text
    assert not [p for p in (cache / "insightface").iterdir() if p.name.startswith(".")]  # no partial files left
    b.close()
    backend(spec, str(cache)).load()  # the second load reads the cache
    assert requests == ["/tinypack.zip"]


def test_download_with_a_wrong_checksum_fails_and_leaves_nothing(tiny_catalog: Catalog, pack_server, tmp_path: Path) -> None:
    url, _, _ = pack_server
    spec = tiny_catalog.get(TINY).model_copy(update={"source": "tinypack", "options": {"url": url, "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="sha256"):
        backend(spec, str(tmp_path / "cache")).load()
    assert list((tmp_path / "cache" / "insightface").iterdir()) == []


def test_a_pull_fetches_the_pack_where_the_load_reads_it(tiny_catalog: Catalog, pack_server, tmp_path: Path) -> None:
    """``POST /v1/models/{name}/pull`` (modelhost's Pulls, kind url) fetches ahead of the load, outside the
    worker: the load that follows reads the same folder and fetches nothing."""
    from modelhost.pulls import Pulls

    url, requests, payload = pack_server
    spec = tiny_catalog.get(TINY).model_copy(update={"id": "tinypack", "source": "tinypack", "options": {
        **tiny_catalog.get(TINY).options, "url": url, "sha256": hashlib.sha256(payload).hexdigest()}})
    cache = tmp_path / "cache"

    async def pull() -> Any:
        pulls = Pulls([spec], cache, offline=False)
        await pulls.start(spec.id)
        return await pulls.wait(spec.id)

    s = asyncio.run(pull())
    assert s.state == "done" and s.kind == "url" and s.bytes_done == s.bytes_total == len(payload), s
    assert s.cached is True and requests == ["/tinypack.zip"]
    b = backend(spec, str(cache))
    assert b.load() == "cpu"
    b.warmup()
    b.close()
    assert requests == ["/tinypack.zip"]  # the load found the pulled pack: nothing downloaded again
    assert _packs.pack_dir(spec, str(cache)) == cache / "insightface" / "tinypack"


def test_pack_with_two_recognizers_needs_rec_model(tiny_catalog: Catalog, tiny_dir: Path, tmp_path: Path) -> None:
    # e.g. buffalo_l's detector next to an LVFace recogniser exported in ArcFace format
    pack = tmp_path / "pack"
    shutil.copytree(tiny_dir / "face" / TINY, pack)
    shutil.copy(pack / "w600k_tiny.onnx", pack / "lvface_tiny.onnx")
    spec = tiny_catalog.get(TINY).model_copy(update={"source": str(pack)})
    with pytest.raises(ValueError, match="several recognition models .*lvface_tiny.onnx, w600k_tiny.onnx.*'rec_model'"):
        backend(spec).load()
    chosen = backend(spec.model_copy(update={"options": {**spec.options, "rec_model": "lvface_tiny.onnx"}}))
    assert chosen.load() == "cpu"
    chosen.warmup()


def test_source_that_is_neither_a_directory_nor_a_pack_name_fails_clearly(tiny_catalog: Catalog) -> None:
    spec = tiny_catalog.get(TINY).model_copy(update={"source": "/no/such/dir"})
    with pytest.raises(FileNotFoundError, match="neither a directory nor a pack name"):
        backend(spec).load()


def test_backend_table_and_items_import_nothing_heavy() -> None:
    # The HTTP process imports these to validate the catalog and build items; onnxruntime, onnx, OpenCV and
    # dlib belong to the worker process.
    code = (
        "import sys, face_svc.backends, face_svc.items, face_svc.api; "
        "heavy = sorted(m for m in ('onnxruntime', 'onnx', 'cv2', 'dlib') if m in sys.modules); "
        "print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"imported: {done.stdout.strip()} {done.stderr[-500:]}"


# -- dlib on real photos ---------------------------------------------------------------------------


def test_dlib_finds_the_astronauts_face_where_it_is(dlib_model, astronaut: np.ndarray) -> None:
    [result] = dlib_model.infer([DetectItem(image=astronaut, max_faces=10)])
    assert result["found"] == 1  # det_thresh 0.3 drops HOG's weak false positive on the suit's patch
    [face] = result["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 165 <= x1 and x2 <= 275 and 60 <= y1 and y2 <= 180 and x2 - x1 >= 70
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face["landmarks"]
    assert x1 < lx < nx < rx < x2 and max(ly, ry) < ny < min(mly, mry) < y2 and mlx < mrx


def test_dlib_finds_the_six_people_of_the_group_photo(dlib_model, group_photo: np.ndarray) -> None:
    [result] = dlib_model.infer([DetectItem(image=group_photo, max_faces=10, crops=True)])
    assert result["found"] == 6
    assert all(f["crop"].shape == (150, 150, 3) for f in result["faces"])
    areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in result["faces"]]
    assert areas == sorted(areas, reverse=True)


def test_dlib_embeds_the_same_person_close_and_others_apart(
        dlib_model, tiny_catalog: Catalog, astronaut, astronaut_flipped, group_photo, tom_hanks) -> None:
    threshold = tiny_catalog.get(DLIB).options["verify_threshold"]
    items = [DetectItem(image=img, max_faces=1, embed=True) for img in (astronaut, astronaut_flipped, group_photo, tom_hanks)]
    results = dlib_model.infer(items)
    assert [r["recognition_batch"] for r in results] == [4, 4, 4, 4]  # one pass of the embedder for the batch
    a, a2, other, tom = (r["faces"][0]["embedding"] for r in results)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5) and a.shape == (128,)
    assert float(a @ a2) >= threshold + 0.04
    assert float(a @ other) < threshold - 0.02
    assert float(a @ tom) < threshold - 0.02


def test_dlib_given_box_without_a_detection_still_gets_landmarks(dlib_model, astronaut) -> None:
    box = (180.0, 80.0, 262.0, 162.0)
    [result] = dlib_model.infer([DetectItem(image=astronaut, max_faces=1, boxes=(box, (0.0, 0.0, 60.0, 60.0)), embed=True)])
    matched, undetected = result["faces"]
    assert matched["score"] > 0.3 and matched["box"] != list(box)  # the detector's own face box
    assert undetected["score"] == 0.0 and undetected["box"] == [0.0, 0.0, 60.0, 60.0]
    assert undetected["embedding"] is not None


def test_dlib_embedding_of_its_crop_equals_the_detect_embedding(dlib_model, astronaut) -> None:
    [detected] = dlib_model.infer([DetectItem(image=astronaut, max_faces=1, embed=True, crops=True)])
    face = detected["faces"][0]
    [embedded] = dlib_model.infer([EmbedItem(crops=(face["crop"],))])
    np.testing.assert_allclose(embedded["embeddings"][0], face["embedding"], atol=1e-5)


def test_dlib_cnn_detector_finds_the_astronauts_face(tiny_catalog: Catalog, astronaut) -> None:
    # The MMOD detector is slow on CPU (seconds for a 512 px photo): a 240 px crop around her head.
    spec = tiny_catalog.get(DLIB)
    b = backend(spec.model_copy(update={"options": {**spec.options, "detector": "cnn", "upsample": 0, "det_thresh": 0.5}}))
    assert b.load() == "cpu"
    try:
        b.warmup()
        [result] = b.infer([DetectItem(image=np.ascontiguousarray(astronaut[20:260, 100:340]), max_faces=5, embed=True)])
    finally:
        b.close()
    [face] = result["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 65 <= x1 and x2 <= 175 and 40 <= y1 and y2 <= 160 and face["score"] > 0.5  # (165..275, 60..180) uncropped
    assert face["embedding"].shape == (128,)


def test_dlib_asked_for_cuda_reports_cpu_on_a_cpu_build(tiny_catalog: Catalog) -> None:
    import dlib

    b = backend(tiny_catalog.get(DLIB).model_copy(update={"device": "cuda"}))
    assert b.load() == ("cuda:0" if dlib.DLIB_USE_CUDA else "cpu")
    b.close()


def test_dlib_unknown_detector_is_refused(tiny_catalog: Catalog) -> None:
    spec = tiny_catalog.get(DLIB)
    with pytest.raises(ValueError, match="detector must be 'hog' or 'cnn'"):
        backend(spec.model_copy(update={"options": {**spec.options, "detector": "haar"}}))
