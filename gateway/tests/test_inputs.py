"""Unit tests of the gateway's input checks: body limits, base64, image header checks."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from gateway.bodies import decode_base64_field, parse_json_object
from gateway.images import check_image
from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

pytestmark = pytest.mark.unit


def png(size=(32, 16), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def test_check_image_reads_format_from_header() -> None:
    assert check_image(png(), max_bytes=10**6, max_pixels=10**6) == "PNG"


@pytest.mark.parametrize("data,exc,code", [
    (b"", BadRequest, "empty_file"),
    (b"\x89PNG\r\n\x1a\n" + b"garbage" * 5, BadRequest, "corrupt_image"),
    (b"GIF89a-not-really", UnsupportedMediaType, "unsupported_media_type"),
    (b"just some text", UnsupportedMediaType, "unsupported_media_type"),
])
def test_check_image_rejects_bad_bytes(data: bytes, exc: type, code: str) -> None:
    with pytest.raises(exc) as e:
        check_image(data, max_bytes=10**6, max_pixels=10**6)
    assert e.value.code == code


def test_check_image_rejects_too_many_bytes_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        check_image(png(), max_bytes=10, max_pixels=10**6)


def test_check_image_rejects_a_decompression_bomb_from_its_header() -> None:
    bomb = png((5000, 5000), mode="1")
    assert len(bomb) < 100_000
    with pytest.raises(PayloadTooLarge) as e:
        check_image(bomb, max_bytes=10**6, max_pixels=1_000_000)
    assert e.value.code == "too_many_pixels"


def test_base64_plain_and_data_url() -> None:
    raw = b"\x89PNG some bytes"
    enc = base64.b64encode(raw).decode()
    assert decode_base64_field(enc, "image") == raw
    assert decode_base64_field("data:image/png;base64," + enc, "image") == raw


@pytest.mark.parametrize("value", ["", "***", 42, None, "data:image/png,abc"])
def test_base64_rejects_garbage(value) -> None:
    with pytest.raises(BadRequest) as e:
        decode_base64_field(value, "image")
    assert e.value.param == "image"


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_json_body_must_be_an_object(body: bytes) -> None:
    with pytest.raises(BadRequest) as e:
        parse_json_object(body)
    assert e.value.code == "invalid_json"
