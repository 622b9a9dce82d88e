"""decode_image: every upload is an upright RGB image or a 4xx, whatever its bytes."""

from __future__ import annotations

import io
import random
import struct
from typing import Any

import numpy as np
import pytest
from PIL import Image

from caption_svc.images import decode_image
from modelhost.errors import PayloadTooLarge, RoundhouseError

# Pillow warns about the corrupt EXIF and TIFF tags these tests feed it on purpose.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 4_000_000, "max_side": 2048, "max_decode_bytes": 16_000_000}


def encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


NOISE = Image.fromarray((np.random.RandomState(0).rand(20, 24, 3) * 255).astype("uint8"), "RGB")
SAMPLES = {
    "jpeg": encode(NOISE, "JPEG"),
    "jpeg_exif": encode(NOISE, "JPEG", exif=exif(6)),
    "webp": encode(NOISE, "WEBP"),
    "png": encode(NOISE, "PNG"),
    "gif": encode(NOISE.convert("P"), "GIF"),
    "bmp": encode(NOISE, "BMP"),
    "tiff": encode(NOISE, "TIFF"),
}


def outcome(data: bytes) -> str:
    """'ok' for an RGB image, the status of a 4xx error; anything else propagates and fails the test."""
    try:
        image = decode_image(data, **LIMITS)
    except RoundhouseError as e:
        assert e.status in (400, 413, 415), f"{e.status} {e.code}: {e.message}"
        assert e.param == "file"
        return str(e.status)
    assert image.mode == "RGB" and image.width > 0 and image.height > 0
    return "ok"


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_every_truncation_is_an_image_or_a_4xx(fmt: str) -> None:
    data = SAMPLES[fmt]
    seen = {outcome(data[:cut]) for cut in range(1, len(data))}
    assert "400" in seen  # a truncated file in a known format is bad input, not a server error


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_corrupted_bytes_are_an_image_or_a_4xx(fmt: str) -> None:
    rng = random.Random(fmt)
    data = SAMPLES[fmt]
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        outcome(bytes(mutated))


@pytest.mark.parametrize(("orientation", "size"), [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_exif_orientation_is_applied(orientation: int, size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif(orientation))
    assert decode_image(data, **LIMITS).size == size


def test_longer_side_is_scaled_to_max_side() -> None:
    data = encode(Image.new("RGB", (1000, 250), "blue"), "JPEG")
    assert decode_image(data, **{**LIMITS, "max_side": 200}).size == (200, 50)


def lying_jpeg(width: int, height: int) -> bytes:
    """A 48x48 JPEG of a few KB whose header says ``width`` x ``height``: it decodes, into a canvas of that size."""
    data = bytearray(encode(NOISE.resize((48, 48)), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_jpeg_is_decoded_reduced_so_a_lying_header_never_gets_its_full_canvas(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[tuple[int, int]] = []
    load = Image.Image.load

    def watched(self: Image.Image) -> Any:
        loaded.append(self.size)
        return load(self)
    monkeypatch.setattr(Image.Image, "load", watched)
    data = lying_jpeg(7000, 7000)
    assert len(data) < 5000
    image = decode_image(data, **{**LIMITS, "max_pixels": 50_000_000, "max_side": 640})
    assert image.size == (640, 640)
    assert max(w * h for w, h in loaded) == 875 * 875  # decoded at 1/8 scale: 3 MB, not 7000x7000 = 196 MB


def test_a_canvas_over_the_decode_budget_is_413_before_decoding() -> None:
    data = encode(Image.new("RGB", (1500, 1500), "green"), "PNG")  # PNG has no reduced decode: 9 MB of canvas
    with pytest.raises(PayloadTooLarge) as e:
        decode_image(data, **{**LIMITS, "max_decode_bytes": 8_000_000})
    assert e.value.code == "decode_too_large"
    assert decode_image(data, **{**LIMITS, "max_decode_bytes": 9_000_000}).size == (1500, 1500)
