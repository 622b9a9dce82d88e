"""decode_image: the upright size as uploaded and the scale come from the header; a JPEG is decoded reduced,
so a header that lies about its size never gets its full canvas; a canvas over the budget is 413 unread."""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
import pytest
from PIL import Image

from face_svc.images import decode_image
from modelhost.errors import PayloadTooLarge

pytestmark = pytest.mark.unit

LIMITS = {"max_bytes": 10_000_000, "max_pixels": 50_000_000, "max_side": 640, "max_decode_bytes": 16_000_000}


def encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def lying_jpeg(width: int, height: int) -> bytes:
    noise = Image.fromarray((np.random.RandomState(0).rand(48, 48, 3) * 255).astype("uint8"), "RGB")
    data = bytearray(encode(noise, "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_lying_jpeg_is_decoded_at_an_eighth_and_reported_at_its_header_size(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[tuple[int, int]] = []
    load = Image.Image.load

    def watched(self: Image.Image) -> Any:
        loaded.append(self.size)
        return load(self)
    monkeypatch.setattr(Image.Image, "load", watched)
    decoded = decode_image(lying_jpeg(7000, 5600), **LIMITS)
    assert (decoded.width, decoded.height) == (7000, 5600)
    assert decoded.pixels.shape == (512, 640, 3) and decoded.scale == pytest.approx(640 / 7000)
    assert max(w * h for w, h in loaded) == 875 * 700  # 1/8 scale: 2.4 MB of canvas, not 157 MB


def test_an_exif_quarter_turn_swaps_the_reported_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(Image.new("RGB", (1000, 500), "red"), "JPEG", exif=exif.tobytes()), **LIMITS)
    assert (decoded.width, decoded.height) == (500, 1000)
    assert decoded.pixels.shape == (640, 320, 3) and decoded.scale == pytest.approx(0.64)


def test_a_png_over_the_decode_budget_is_413_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge) as e:
        decode_image(encode(Image.new("RGB", (2100, 2000), "blue"), "PNG"), **LIMITS)  # 16.8 MB of canvas
    assert e.value.code == "decode_too_large"
