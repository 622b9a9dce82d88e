"""The gateway driving the real face service, both as real processes on loopback: the tiny
insightface-format pack built locally, and dlib's real models on real photos. Faces come back through the
public routes (multipart and JSON), every bad input gets its 4xx envelope, and both processes stay up.

The tiny recogniser's "people" are colours (tools/make_tiny_face_models.py): a white square and a yellowish
one are two people."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import procs
from tests.face_fixtures import (FACE_MAX_FACES, face_catalog, face_gateway, face_photos,  # noqa: F401 - fixtures
                                 face_svc)

pytestmark = pytest.mark.proc

TINY = "tiny-insightface"
DLIB = "dlib-resnet"
WHITE, YELLOW = (255, 255, 255), (255, 255, 180)


def squares(at: tuple[tuple[int, int], ...] = ((56, 40),), colour: tuple[int, int, int] = WHITE, fmt: str = "PNG",
            size: tuple[int, int] = (320, 240)) -> bytes:
    """Light 64 px squares on black: the tiny detector's faces (corners on 16i+8 of its 320 px input)."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    for x, y in at:
        pixels[y:y + 64, x:x + 64] = colour
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt != "PNG" else {}))
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_envelope(r: httpx.Response, status: int, code: str, src: str = "gateway") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"src", "request_id", "error"}, body
    assert body["src"] == src and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert r.headers["x-request-id"] == body["request_id"]
    return body


@pytest.fixture(scope="module")
def gw(face_gateway: procs.Proc) -> httpx.Client:
    return httpx.Client(base_url=face_gateway.url, timeout=120)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_detect_multipart_finds_the_face(gw: httpx.Client, fmt: str) -> None:
    r = gw.post("/v1/faces/detect", files={"file": (f"a.{fmt.lower()}", squares(fmt=fmt))}, data={"model": TINY})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "face.detection" and body["model"] == TINY
    [face] = body["faces"]
    assert face["box"] == pytest.approx([56, 40, 120, 104], abs=0.5)
    assert len(face["landmarks"]) == 5 and "embedding" not in face


def test_detect_json_base64_and_data_url_with_embeddings_and_crops(gw: httpx.Client) -> None:
    raw = squares(at=((56, 40), (200, 120)))
    for image in (b64(raw), "data:image/png;base64," + b64(raw)):
        r = gw.post("/v1/faces/detect", json={"image": image, "model": TINY, "embed": True, "crops": True})
        assert r.status_code == 200, r.text
        faces = r.json()["faces"]
        assert len(faces) == 2
        assert all(len(f["embedding"]) == 512 and f["crop"] for f in faces)


def test_detect_without_model_uses_the_catalogs_first_face_model(gw: httpx.Client) -> None:
    r = gw.post("/v1/faces/detect", files={"file": ("a.png", squares())})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == TINY


def test_image_without_faces_is_200_with_no_faces(gw: httpx.Client) -> None:
    r = gw.post("/v1/faces/detect", files={"file": ("a.png", squares(at=()))}, data={"embed": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["faces"] == []


def test_faces_over_the_limit_are_cut_to_the_largest(gw: httpx.Client) -> None:
    six = squares(at=((8, 8), (104, 8), (200, 8), (8, 136), (104, 136), (200, 136)))
    body = gw.post("/v1/faces/detect", files={"file": ("a.png", six)}).json()
    assert (len(body["faces"]), body["found"], body["truncated"]) == (FACE_MAX_FACES, 6, True)
    body = gw.post("/v1/faces/detect", files={"file": ("a.png", six)}, data={"max_faces": "2"}).json()
    assert len(body["faces"]) == 2


def test_embed_of_detect_crops_gives_the_detect_embeddings(gw: httpx.Client) -> None:
    body = gw.post("/v1/faces/detect", json={"image": b64(squares(at=((56, 40), (200, 120)))), "embed": True,
                                             "crops": True}).json()
    crops = [base64.b64decode(f["crop"]) for f in body["faces"]]
    multipart = gw.post("/v1/faces/embed", files=[("file", (f"c{i}.png", c)) for i, c in enumerate(crops)], data={"model": TINY})
    as_json = gw.post("/v1/faces/embed", json={"images": [b64(c) for c in crops], "model": TINY})
    for r in (multipart, as_json):
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "list" and out["dim"] == 512 and [e["index"] for e in out["data"]] == [0, 1]
        for face, e in zip(body["faces"], out["data"]):
            np.testing.assert_allclose(e["embedding"], face["embedding"], atol=1e-5)


def test_verify_same_and_different_people(gw: httpx.Client) -> None:
    white, white_elsewhere, yellow = squares(), squares(at=((200, 120),)), squares(colour=YELLOW)
    r = gw.post("/v1/faces/verify", files={"file_a": ("a.png", white), "file_b": ("b.png", white_elsewhere)})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "same" and r.json()["threshold"] == 0.9
    r = gw.post("/v1/faces/verify", json={"image_a": b64(white), "image_b": b64(yellow), "model": TINY})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "different"


def test_verify_with_given_boxes_in_a_form_and_in_json(gw: httpx.Client) -> None:
    pixels = np.zeros((240, 320, 3), np.uint8)
    pixels[40:104, 56:120] = WHITE
    pixels[120:184, 200:264] = YELLOW
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    both, yellow = buf.getvalue(), squares(colour=YELLOW)
    r = gw.post("/v1/faces/verify", files={"file_a": ("a.png", both), "file_b": ("b.png", yellow)},
                data={"box_a": "200,120,264,184"})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "same" and r.json()["face_a"]["box"] == pytest.approx([200, 120, 264, 184], abs=0.5)
    r = gw.post("/v1/faces/verify", json={"image_a": b64(both), "image_b": b64(yellow), "box_a": [52, 36, 124, 108]})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "different"


def test_dlib_on_real_photos_through_the_gateway(gw: httpx.Client, face_photos: Path) -> None:
    astronaut = (face_photos / "astronaut.jpg").read_bytes()
    r = gw.post("/v1/faces/detect", files={"file": ("astronaut.jpg", astronaut)}, data={"model": DLIB, "embed": "true"})
    assert r.status_code == 200, r.text
    [face] = r.json()["faces"]
    x1, y1, x2, y2 = face["box"]
    assert 165 <= x1 and x2 <= 275 and 60 <= y1 and y2 <= 180 and len(face["embedding"]) == 128

    flipped = (face_photos / "astronaut-flipped.jpg").read_bytes()
    r = gw.post("/v1/faces/verify", files={"file_a": ("a.jpg", astronaut), "file_b": ("b.jpg", flipped)}, data={"model": DLIB})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "same", r.json()
    other = (face_photos / "t1.jpg").read_bytes()
    r = gw.post("/v1/faces/verify", json={"image_a": b64(astronaut), "image_b": b64(other), "model": DLIB})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "different", r.json()


def _huge_png() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (3000, 3000)).save(buf, "PNG")  # 9 MP of one colour: a few KB, over the 4 MP limit
    return buf.getvalue()


JPEG = squares(fmt="JPEG", size=(320, 240))
D, E, V = "/v1/faces/detect", "/v1/faces/embed", "/v1/faces/verify"
PAIR = {"file_a": ("a.png", squares()), "file_b": ("b.png", squares())}

BAD_INPUTS = [
    # (name, path, request kwargs, status, code, src)
    ("not an image", D, dict(files={"file": ("a.txt", b"hello, I am text")}), 415, "unsupported_media_type", "gateway"),
    ("zero bytes", D, dict(files={"file": ("a.jpg", b"")}), 400, "empty_file", "gateway"),
    ("truncated jpeg", D, dict(files={"file": ("a.jpg", JPEG[: len(JPEG) // 2])}), 400, "corrupt_image", "face-svc"),
    ("over the size limit", D, dict(files={"file": ("a.bin", b"\xff\xd8" + b"\0" * (3 * 1024 * 1024))}), 413, "payload_too_large", "gateway"),
    ("decompression bomb", D, dict(files={"file": ("bomb.png", _huge_png())}), 413, "too_many_pixels", "gateway"),
    ("unknown model", D, dict(files={"file": ("a.png", squares())}, data={"model": "no-such-model"}), 404, "model_not_found", "gateway"),
    ("missing file field", D, dict(data={"model": TINY}, files={"other": ("x", b"x")}), 400, "missing_file", "gateway"),
    ("malformed json", D, dict(content=b'{"image": ', headers={"content-type": "application/json"}), 400, "invalid_json", "gateway"),
    ("json without image", D, dict(json={"model": TINY}), 400, "missing_image", "gateway"),
    ("bad base64", D, dict(json={"image": "not base64!!"}), 400, "invalid_base64", "gateway"),
    ("base64 of text", D, dict(json={"image": b64(b"plain text")}), 415, "unsupported_media_type", "gateway"),
    ("wrong content type", D, dict(content=b"raw", headers={"content-type": "text/plain"}), 415, "unsupported_content_type", "gateway"),
    ("embed flag not a boolean", D, dict(files={"file": ("a.png", squares())}, data={"embed": "maybe"}), 400, "bad_request", "gateway"),
    ("max_faces zero", D, dict(files={"file": ("a.png", squares())}, data={"max_faces": "0"}), 400, "bad_request", "gateway"),
    ("max_faces over the service's limit", D, dict(files={"file": ("a.png", squares())}, data={"max_faces": "99"}), 400, "bad_request", "face-svc"),
    ("embed without crops", E, dict(json={"images": []}), 400, "bad_request", "gateway"),
    ("embed with a text crop", E, dict(files=[("file", ("c.png", squares())), ("file", ("d.txt", b"text"))]), 415, "unsupported_media_type", "gateway"),
    ("embed over the service's crop limit", E, dict(files=[("file", (f"c{i}.png", squares())) for i in range(FACE_MAX_FACES + 1)]), 400, "too_many_crops", "face-svc"),
    ("verify without file_b", V, dict(files={"file_a": ("a.png", squares())}), 400, "missing_file", "gateway"),
    ("verify box not four numbers", V, dict(files=PAIR, data={"box_a": "1,2,3"}), 400, "invalid_box", "gateway"),
    ("verify box upside down", V, dict(json={"image_a": b64(squares()), "image_b": b64(squares()), "box_b": [10, 10, 5, 5]}), 400, "invalid_box", "gateway"),
    ("verify box outside the image", V, dict(files=PAIR, data={"box_b": "400,300,500,400"}), 400, "invalid_box", "face-svc"),
    ("verify image without a face", V, dict(files={"file_a": ("a.png", squares()), "file_b": ("b.png", squares(at=()))}), 400, "no_face", "face-svc"),
]


@pytest.mark.parametrize("name,path,kwargs,status,code,src", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_envelope(gw: httpx.Client, face_gateway: procs.Proc, face_svc: procs.Proc, name: str,
                                         path: str, kwargs: dict, status: int, code: str, src: str) -> None:
    assert_envelope(gw.post(path, **kwargs), status, code, src)
    # both processes stay up and keep serving
    assert face_gateway.proc.poll() is None and face_svc.proc.poll() is None
    ok = gw.post("/v1/faces/detect", files={"file": ("a.png", squares())}, data={"embed": "true"})
    assert ok.status_code == 200 and len(ok.json()["faces"]) == 1, ok.text


def test_face_models_are_listed_and_documented(gw: httpx.Client) -> None:
    ids = [m["id"] for m in gw.get("/v1/models").json()["data"] if m["family"] == "face"]
    assert ids == ["yunet-sface", TINY, DLIB]  # the real offline model first: `make dev`'s default
    paths = gw.get("/openapi.json").json()["paths"]
    assert {"/v1/faces/detect", "/v1/faces/embed", "/v1/faces/verify"} <= set(paths)


def test_admin_shows_face_models_loaded_on_cpu(gw: httpx.Client) -> None:
    assert gw.post("/v1/faces/detect", files={"file": ("a.png", squares())}).status_code == 200
    rows = {m["id"]: m for m in gw.get("/admin/models").json()["data"]}
    assert rows[TINY]["state"] == "ready" and rows[TINY]["device"] == "cpu" and rows[TINY]["service"] == "face-svc"
