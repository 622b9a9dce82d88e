"""caption-svc through HTTP: create_app with the real worker and a tiny random-weight BLIP, on CPU.

Checks what the service promises at its edge: common formats caption, EXIF orientation is honoured,
every kind of bad input gets its own 4xx envelope before any inference, and none of them harms the
service.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from caption_svc.config import CaptionSettings
from caption_svc.main import create_app

pytestmark = pytest.mark.app

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-blip"
MAX_UPLOAD_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def client(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = CaptionSettings(
        catalog=tiny_models / "catalog.yaml",
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
    )
    with TestClient(create_app(settings)) as c:
        r = c.post(f"/v1/models/{MODEL}/load")
        assert r.status_code == 200, r.text
        yield c


def encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR (valid CRC) claiming ``width`` x ``height``, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def caption(client: TestClient, data: bytes, *, model: str = MODEL, filename: str = "image", **form: Any):
    return client.post("/v1/captions", data={"model": model, **form}, files={"file": (filename, data, "application/octet-stream")})


def assert_envelope(r, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "caption-svc"
    assert body["error"]["code"] == code
    return body


def test_load_reports_ready_on_cpu(client: TestClient) -> None:
    [m] = [m for m in client.get("/v1/models").json()["data"] if m["id"] == MODEL]
    assert m["state"] == "ready" and m["device"] == "cpu" and m["memory_bytes"] > 0


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_common_formats_are_captioned(client: TestClient, fmt: str) -> None:
    r = caption(client, encode(noise(64, 48), fmt))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["object"] == "image.caption"
    assert isinstance(body["caption"], str) and body["caption"].strip()
    assert body["tokens"] >= 1
    assert (body["width"], body["height"]) == (64, 48)


def test_prompt_and_max_new_tokens_are_accepted(client: TestClient) -> None:
    r = caption(client, encode(noise(32, 32), "PNG"), prompt="a picture of", max_new_tokens="3")
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["tokens"] <= 3


def test_exif_orientation_is_honoured(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    r = caption(client, encode(noise(40, 20), "JPEG", exif=exif.tobytes()))
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (20, 40)


def test_large_image_is_scaled_down_to_max_side(client: TestClient) -> None:
    r = caption(client, encode(Image.new("RGB", (3000, 300), "gray"), "PNG"))
    assert r.status_code == 200, r.text
    assert max(r.json()["width"], r.json()["height"]) == 2048  # CaptionSettings.max_image_side


JPEG = encode(noise(200, 200), "JPEG")
WEBP = encode(noise(200, 200), "WEBP")

BAD_FILES = {
    "not_an_image": (b"this is plain text, not an image", 415, "unsupported_media_type"),
    "zero_bytes": (b"", 400, "empty_file"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 2], 400, "corrupt_image"),
    "jpeg_cut_in_its_header": (JPEG[:100], 400, "corrupt_image"),
    "truncated_webp": (WEBP[: len(WEBP) // 2], 400, "corrupt_image"),
    "over_max_upload_bytes": (b"\xff" * (MAX_UPLOAD_BYTES + 1), 413, "payload_too_large"),
    "header_claims_huge_size": (png_header_only(100_000, 100_000), 413, "too_many_pixels"),
    "over_max_image_pixels": (encode(Image.new("RGB", (1100, 1000)), "PNG"), 413, "too_many_pixels"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_gets_its_4xx(client: TestClient, name: str) -> None:
    data, status, code = BAD_FILES[name]
    body = assert_envelope(caption(client, data), status, code)
    assert body["error"]["param"] == "file"


def test_unknown_model_is_404(client: TestClient) -> None:
    assert_envelope(caption(client, encode(noise(8, 8), "PNG"), model="no-such-model"), 404, "model_not_found")


def test_model_not_loaded_is_503_with_retry_after(client: TestClient) -> None:
    r = caption(client, encode(noise(8, 8), "PNG"), model="tiny-blip2")
    assert_envelope(r, 503, "model_not_ready")
    assert int(r.headers["Retry-After"]) >= 1


def test_missing_file_field_is_422(client: TestClient) -> None:
    r = client.post("/v1/captions", data={"model": MODEL})
    body = assert_envelope(r, 422, "validation_error")
    assert body["error"]["param"] == "file"


def test_too_long_prompt_is_400(client: TestClient) -> None:
    body = assert_envelope(caption(client, encode(noise(8, 8), "PNG"), prompt="x" * 2001), 400, "bad_request")
    assert body["error"]["param"] == "prompt"


def test_service_still_answers_after_every_bad_input(client: TestClient) -> None:
    pid = client.get("/v1/models").json()["worker_pid"]
    for data, status, _ in BAD_FILES.values():
        assert caption(client, data).status_code == status
    assert caption(client, encode(noise(8, 8), "PNG"), model="no-such-model").status_code == 404
    assert client.post("/v1/captions", data={"model": MODEL}).status_code == 422
    r = caption(client, encode(noise(64, 48), "JPEG"))
    assert r.status_code == 200 and r.json()["caption"].strip()
    listing = client.get("/v1/models").json()
    assert listing["worker_pid"] == pid  # no bad input reached, let alone hurt, the worker
    assert [m["state"] for m in listing["data"] if m["id"] == MODEL] == ["ready"]
