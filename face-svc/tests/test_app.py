"""face-svc through HTTP: create_app with the real worker, the tiny insightface-format pack and dlib's real
models, on CPU.

Checks what the service promises at its edge: faces come back where they are, in the uploaded image's
pixels; embed and verify agree with detect; recognition batches faces across concurrent requests; every kind
of bad input gets its own 4xx envelope before any inference, and none of them harms the service.

The tiny recogniser's "people" are colours (tools/make_tiny_face_models.py): a white square and a yellowish
one are two people, two white squares one."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from face_svc.config import FaceSettings
from face_svc.main import create_app

pytestmark = pytest.mark.app

TINY = "tiny-insightface"
DLIB = "dlib-resnet"
MAX_UPLOAD_BYTES = 2_000_000
MAX_IMAGE_PIXELS = 4_000_000
MAX_FACES = 5
WHITE, YELLOW = (255, 255, 255), (255, 255, 180)


@pytest.fixture(scope="module")
def client(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = FaceSettings(
        catalog=tiny_dir / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"), max_upload_bytes=MAX_UPLOAD_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS, max_image_side=640, max_faces=MAX_FACES,
    )
    with TestClient(create_app(settings)) as c:
        for model in (TINY, DLIB):
            r = c.post(f"/v1/models/{model}/load")
            assert r.status_code == 200, r.text
        yield c


def squares(width: int = 320, height: int = 240, at: tuple[tuple[int, int], ...] = ((56, 40),), side: int = 64,
            colour: tuple[int, int, int] = WHITE, image: np.ndarray | None = None) -> np.ndarray:
    """Light squares on black at the given top-left corners: the tiny detector's faces (64 px of its
    320 px input, corners on 16i+8)."""
    image = np.zeros((height, width, 3), np.uint8) if image is None else image.copy()
    for x, y in at:
        image[y:y + side, x:x + side] = colour
    return image


def encode(pixels: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR (valid CRC) claiming ``width`` x ``height``, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def detect(client: TestClient, data: bytes, *, model: str = TINY, **form: Any):
    return client.post("/v1/faces/detect", data={"model": model, **form}, files={"file": ("image", data, "application/octet-stream")})


def verify(client: TestClient, a: bytes, b: bytes, *, model: str = TINY, **form: Any):
    return client.post("/v1/faces/verify", data={"model": model, **form},
                       files={"file_a": ("a", a, "application/octet-stream"), "file_b": ("b", b, "application/octet-stream")})


def assert_envelope(r, status: int, code: str, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "face-svc" and body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body


def test_both_models_are_ready_on_cpu(client: TestClient) -> None:
    listing = client.get("/v1/models").json()
    assert listing["family"] == "face" and listing["service"] == "face-svc"
    states = {m["id"]: (m["state"], m["device"]) for m in listing["data"]}
    assert states == {"yunet-sface": ("unloaded", None), TINY: ("ready", "cpu"), DLIB: ("ready", "cpu")}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_detect_finds_the_face_where_it_is(client: TestClient, fmt: str) -> None:
    r = detect(client, encode(squares(), fmt, **({"quality": 95} if fmt != "PNG" else {})))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "face.detection" and body["model"] == TINY
    assert (body["width"], body["height"], body["found"], body["truncated"]) == (320, 240, 1, False)
    [face] = body["faces"]
    assert face["box"] == pytest.approx([56, 40, 120, 104], abs=0.5)
    assert len(face["landmarks"]) == 5 and face["score"] > 0.99
    assert "embedding" not in face and "crop" not in face  # only when asked for


def test_image_without_faces_is_200_with_no_faces(client: TestClient) -> None:
    r = detect(client, encode(np.full((120, 160, 3), 30, np.uint8)), embed="true")
    assert r.status_code == 200, r.text
    assert r.json()["faces"] == [] and r.json()["found"] == 0


def test_boxes_are_in_the_uploaded_pixels_of_a_scaled_image(client: TestClient) -> None:
    # 1280x960 is decoded at 640x480 (max_image_side) and detected at 320x240 (det_size): 256 px -> 64 px.
    r = detect(client, encode(squares(1280, 960, at=((224, 160),), side=256)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (1280, 960)
    assert [f["box"] for f in body["faces"]] == [pytest.approx([224, 160, 480, 416], abs=1)]
    x1, y1, x2, y2 = body["faces"][0]["box"]
    assert all(x1 < x < x2 and y1 < y < y2 for x, y in body["faces"][0]["landmarks"])


def test_exif_orientation_is_honoured(client: TestClient) -> None:
    upright = squares(240, 320, at=((56, 40),))  # portrait: 240 wide, 320 tall
    stored = Image.fromarray(upright).rotate(90, expand=True)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    r = detect(client, buf.getvalue())
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (240, 320)
    assert r.json()["faces"][0]["box"] == pytest.approx([56, 40, 120, 104], abs=1)


def test_embeddings_are_unit_length_and_crops_are_aligned_png(client: TestClient) -> None:
    r = detect(client, encode(squares(at=((56, 40), (200, 120)))), embed="true", crops="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recognition_batch"] >= 2
    for face in body["faces"]:
        assert len(face["embedding"]) == 512
        assert np.linalg.norm(face["embedding"]) == pytest.approx(1.0, abs=1e-4)
        crop = Image.open(io.BytesIO(base64.b64decode(face["crop"])))
        assert crop.format == "PNG" and crop.size == (112, 112)


def test_max_faces_keeps_the_largest_and_says_it_cut(client: TestClient) -> None:
    three = encode(squares(at=((8, 8), (104, 8), (200, 120))))
    body = detect(client, three, max_faces="2").json()
    assert (len(body["faces"]), body["found"], body["truncated"]) == (2, 3, True)


def test_faces_per_image_are_capped_by_the_service_setting(client: TestClient) -> None:
    seven = encode(squares(320, 320, at=((8, 8), (104, 8), (200, 8), (8, 104), (104, 104), (200, 104), (8, 200))))
    body = detect(client, seven, embed="true").json()
    assert (len(body["faces"]), body["found"], body["truncated"]) == (MAX_FACES, 7, True)


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_FACES + 1)])
def test_max_faces_out_of_range_is_400(client: TestClient, value: str) -> None:
    assert_envelope(detect(client, encode(squares()), max_faces=value), 400, "bad_request", "max_faces")


def test_embed_of_detect_crops_gives_the_detect_embeddings(client: TestClient) -> None:
    body = detect(client, encode(squares(at=((56, 40),), colour=YELLOW, image=squares(at=((200, 120),)))),
                  embed="true", crops="true").json()
    files = [("file", (f"crop{i}.png", base64.b64decode(f["crop"]), "image/png")) for i, f in enumerate(body["faces"])]
    r = client.post("/v1/faces/embed", data={"model": TINY}, files=files)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "list" and out["dim"] == 512 and out["recognition_batch"] == 2
    assert [e["index"] for e in out["data"]] == [0, 1]
    for face, e in zip(body["faces"], out["data"]):
        np.testing.assert_allclose(e["embedding"], face["embedding"], atol=1e-5)


def test_embed_over_the_crop_limit_is_400(client: TestClient) -> None:
    crop = encode(np.full((112, 112, 3), 200, np.uint8))
    files = [("file", (f"c{i}.png", crop, "image/png")) for i in range(MAX_FACES + 1)]
    assert_envelope(client.post("/v1/faces/embed", data={"model": TINY}, files=files), 400, "too_many_crops", "file")


def test_verify_same_face_elsewhere_is_same_and_another_is_different(client: TestClient) -> None:
    white = encode(squares())
    r = verify(client, white, encode(squares(at=((200, 120),))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "face.verification" and body["verdict"] == "same"
    assert body["similarity"] == pytest.approx(1.0, abs=1e-4) and body["threshold"] == 0.9
    assert body["face_a"]["box"] == pytest.approx([56, 40, 120, 104], abs=0.5)
    assert body["face_b"]["box"] == pytest.approx([200, 120, 264, 184], abs=0.5)
    r = verify(client, white, encode(squares(colour=YELLOW)))
    assert r.json()["verdict"] == "different" and r.json()["similarity"] < 0.5


def test_verify_uses_the_given_boxes_instead_of_the_largest_face(client: TestClient) -> None:
    both = encode(squares(at=((56, 40),), image=squares(at=((200, 120),), colour=YELLOW)))
    yellow = encode(squares(colour=YELLOW))
    assert verify(client, both, yellow, box_a="200,120,264,184").json()["verdict"] == "same"
    body = verify(client, both, yellow, box_a="[52, 36, 124, 108]").json()
    assert body["verdict"] == "different" and body["face_a"]["box"] == pytest.approx([56, 40, 120, 104], abs=0.5)


@pytest.mark.parametrize("form,code,param", [
    ({"box_a": "1,2,3"}, "invalid_box", "box_a"),
    ({"box_a": "10,10,5,20"}, "invalid_box", "box_a"),
    ({"box_b": "nan,1,2,3"}, "invalid_box", "box_b"),
    ({"box_b": "[400, 300, 500, 400]"}, "invalid_box", "box_b"),  # outside the 320x240 image
    ({"box_a": "0,150,40,230"}, "no_face", "file_a"),
])
def test_verify_bad_boxes_are_400(client: TestClient, form: dict, code: str, param: str) -> None:
    assert_envelope(verify(client, encode(squares()), encode(squares()), **form), 400, code, param)


def test_verify_an_image_without_a_face_is_400_no_face(client: TestClient) -> None:
    body = assert_envelope(verify(client, encode(squares()), encode(np.zeros((50, 50, 3), np.uint8))), 400, "no_face", "file_b")
    assert "no face" in body["error"]["message"]


# -- dlib on real photos ---------------------------------------------------------------------------


def test_dlib_detects_the_astronaut_where_she_is(client: TestClient, astronaut: np.ndarray) -> None:
    r = detect(client, encode(astronaut, "JPEG", quality=95), model=DLIB, embed="true", crops="true")
    assert r.status_code == 200, r.text
    [face] = r.json()["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 165 <= x1 and x2 <= 275 and 60 <= y1 and y2 <= 180
    assert len(face["embedding"]) == 128
    assert Image.open(io.BytesIO(base64.b64decode(face["crop"]))).size == (150, 150)


def test_dlib_verify_says_same_for_the_astronaut_flipped_and_cropped(client, astronaut, astronaut_flipped) -> None:
    r = verify(client, encode(astronaut, "JPEG", quality=95), encode(astronaut_flipped, "JPEG", quality=90), model=DLIB)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "same" and body["similarity"] >= body["threshold"] == 0.92


@pytest.mark.parametrize("other", ["group_photo", "tom_hanks"])
def test_dlib_verify_says_different_for_another_person(client, astronaut, other: str, request) -> None:
    photo = request.getfixturevalue(other)
    r = verify(client, encode(astronaut, "JPEG", quality=95), encode(photo, "PNG"), model=DLIB)
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "different" and r.json()["similarity"] < 0.92


# -- batching --------------------------------------------------------------------------------------


def test_recognition_batches_faces_across_concurrent_requests(client: TestClient) -> None:
    images = [encode(squares(at=((56, 40), (200, 120)), colour=(255, 255, 200 + i))) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda data: detect(client, data, embed="true"), images))
    assert all(r.status_code == 200 for r in responses)
    batches = [r.json()["recognition_batch"] for r in responses]
    # Two faces per image: a pass with more held faces from other requests.
    assert max(batches) > 2, batches
    sizes = client.get("/metrics").text
    assert 'roundhouse_model_batch_size_count{family="face",model="tiny-insightface"}' in sizes


# -- bad input -------------------------------------------------------------------------------------

JPEG = encode(squares(), "JPEG")
WEBP = encode(squares(), "WEBP")

BAD_FILES = {
    "not_an_image": (b"this is plain text, not an image", 415, "unsupported_media_type"),
    "zero_bytes": (b"", 400, "empty_file"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 2], 400, "corrupt_image"),
    "jpeg_cut_in_its_header": (JPEG[:100], 400, "corrupt_image"),
    "truncated_webp": (WEBP[: len(WEBP) // 2], 400, "corrupt_image"),
    "over_max_upload_bytes": (b"\xff" * (MAX_UPLOAD_BYTES + 1), 413, "payload_too_large"),
    "header_claims_huge_size": (png_header_only(100_000, 100_000), 413, "too_many_pixels"),
    "over_max_image_pixels": (encode(np.zeros((2100, 2000, 3), np.uint8)), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gets_its_4xx_on_every_route(client: TestClient, name: str) -> None:
    data, status, code = BAD_FILES[name]
    assert_envelope(detect(client, data), status, code, "file")
    assert_envelope(client.post("/v1/faces/embed", data={"model": TINY}, files={"file": ("c", data)}), status, code, "file")
    assert_envelope(verify(client, encode(squares()), data), status, code, "file_b")


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_envelope(detect(client, encode(squares()), model="no-such-model"), 404, "model_not_found", "model")
    assert_envelope(verify(client, encode(squares()), encode(squares()), model="no-such-model"), 404, "model_not_found")


def test_missing_file_and_bad_flags_are_422(client: TestClient) -> None:
    assert_envelope(client.post("/v1/faces/detect", data={"model": TINY}), 422, "validation_error", "file")
    assert_envelope(detect(client, encode(squares()), embed="maybe"), 422, "validation_error", "embed")
    assert_envelope(client.post("/v1/faces/verify", data={"model": TINY}, files={"file_a": ("a", encode(squares()))}),
                    422, "validation_error", "file_b")


def test_service_still_answers_after_every_bad_input(client: TestClient) -> None:
    pid = client.get("/v1/models").json()["worker_pid"]
    for data, status, _ in BAD_FILES.values():
        assert detect(client, data).status_code == status
    assert detect(client, encode(squares()), model="no-such-model").status_code == 404
    r = detect(client, encode(squares()), embed="true")
    assert r.status_code == 200 and len(r.json()["faces"]) == 1
    listing = client.get("/v1/models").json()
    assert listing["worker_pid"] == pid  # no bad input reached, let alone hurt, the worker
    assert {m["state"] for m in listing["data"] if m["id"] in (TINY, DLIB)} == {"ready"}


def test_model_not_loaded_is_503_with_retry_after(client: TestClient) -> None:
    assert client.post(f"/v1/models/{DLIB}/unload").json()["state"] == "unloaded"
    try:
        r = detect(client, encode(squares()), model=DLIB)
        assert_envelope(r, 503, "model_not_ready")
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        assert client.post(f"/v1/models/{DLIB}/load").json()["state"] == "ready"


def test_gpu_model_without_a_usable_gpu_fails_honestly(tiny_dir: Path, tmp_path: Path) -> None:
    # The catalog asks for CUDA; this onnxruntime (or this machine) runs it on CPU: the model is FAILED with
    # the reason, unless the catalog allows the fallback. (On a GPU machine with onnxruntime-gpu it loads.)
    import onnxruntime
    import yaml

    raw = yaml.safe_load((tiny_dir / "catalog.yaml").read_text())
    tiny = next(m for m in raw["models"] if m["id"] == TINY)
    raw["models"] = [{**tiny, "source": str(tiny_dir / "face" / TINY), "device": "cuda:0"},
                     {**tiny, "id": "tiny-fallback", "source": str(tiny_dir / "face" / TINY), "device": "cuda:0",
                      "allow_cpu_fallback": True}]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(raw))
    with TestClient(create_app(FaceSettings(catalog=catalog, cache_dir=tmp_path / "cache"))) as c:
        strict = c.post(f"/v1/models/{TINY}/load")
        fallback = c.post("/v1/models/tiny-fallback/load")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # onnxruntime-gpu on a GPU machine
        assert strict.status_code == 200 and strict.json()["device"] == "cuda:0", strict.text
        return
    body = assert_envelope(strict, 500, "model_load_failed")
    assert "asked for cuda:0 but the model would run on cpu" in body["error"]["message"]
    assert fallback.status_code == 200 and fallback.json()["device"] == "cpu"
