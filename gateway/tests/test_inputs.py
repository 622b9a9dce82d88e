"""Unit tests of the gateway's input checks: body limits, base64, image header checks, and what
``read_upload`` makes of a multipart form or a JSON body of images."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.requests import Request

from gateway.bodies import Part, decode_base64_field, parse_json_object, read_json_object, read_upload
from gateway.images import check_image, check_images
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


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"\xff\xfe", b'"text"', b"[" * 100_000 + b"]" * 100_000,
                                  b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_json_body_must_be_an_object(body: bytes) -> None:
    with pytest.raises(BadRequest) as e:
        parse_json_object(body)
    assert e.value.code == "invalid_json"


def post(**kwargs: Any) -> Request:
    """A Starlette request carrying the body httpx builds from ``kwargs`` (``data``, ``files``, ``json`` ...)."""
    built = httpx.Request("POST", "http://gateway/", **kwargs)
    body = built.read()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k.lower().encode(), v.encode()) for k, v in built.headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"", "headers": headers}, receive)


@pytest.mark.parametrize("ctype", ["text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_json_route_refuses_a_body_not_declared_json_with_415(ctype: str) -> None:
    with pytest.raises(UnsupportedMediaType) as e:
        await read_json_object(post(content=b'{"input": "hi"}', headers={"content-type": ctype}), 1000)
    assert e.value.code == "unsupported_content_type"
    assert await read_json_object(post(content=b'{"input": "hi"}', headers={"content-type": "application/json; charset=utf-8"}),
                                  1000) == {"input": "hi"}


VERIFY = {"images": {"file_a": "image_a", "file_b": "image_b"}, "fields": ("model", "box_a", "box_b"),
          "max_image_bytes": 10**6}
EMBED = {"images": {"file": "images"}, "fields": ("model",), "max_image_bytes": 10**6, "many": "file", "max_many": 3}


async def test_a_form_field_sent_more_than_once_is_a_list_and_blank_fields_are_left_out() -> None:
    request = post(data={"box_a": ["1", "2", "3", "4"], "box_b": "5,6,7,8", "model": ""},
                   files=[("file_a", ("a.png", b"A")), ("file_b", ("b.png", b"B"))])
    upload = await read_upload(request, **VERIFY)
    assert upload.fields == {"box_a": ["1", "2", "3", "4"], "box_b": "5,6,7,8"}
    assert upload.images == {"file_a": [Part("file_a", b"A")], "file_b": [Part("file_b", b"B")]}


async def test_json_images_are_decoded_and_null_fields_left_out() -> None:
    request = post(json={"image_a": base64.b64encode(b"A").decode(), "image_b": "data:image/png;base64,Qg==",
                         "box_a": [1, 2, 3, 4], "box_b": None, "other": 1})
    upload = await read_upload(request, **VERIFY)
    assert upload.fields == {"box_a": [1, 2, 3, 4]}
    assert list(upload.parts()) == [Part("image_a", b"A"), Part("image_b", b"B")]


@pytest.mark.parametrize("kwargs,params", [
    (dict(files=[("file", ("c.png", b"C"))]), ["file"]),
    (dict(files=[("file", ("c.png", b"C")), ("file", ("d.png", b"D"))]), ["file[0]", "file[1]"]),
    (dict(json={"images": ["Qw==", "RA=="]}), ["images[0]", "images[1]"]),
])
async def test_repeated_images_are_named_by_index_in_errors(kwargs: dict, params: list[str]) -> None:
    upload = await read_upload(post(**kwargs), **EMBED)
    assert [p.param for p in upload.parts()] == params


@pytest.mark.parametrize("kwargs,status,code,param", [
    (dict(files=[("file_a", ("a.png", b"A"))]), 400, "missing_file", "file_b"),
    (dict(files=[("file_a", ("a.png", b"A")), ("file_a", ("c.png", b"C")), ("file_b", ("b.png", b"B"))]), 400,
     "bad_request", "file_a"),
    (dict(json={"image_a": "QQ=="}), 400, "missing_image", "image_b"),
    (dict(json={"image_a": "QQ==", "image_b": "not base64!"}), 400, "invalid_base64", "image_b"),
    (dict(content=b"raw", headers={"content-type": "text/plain"}), 415, "unsupported_content_type", None),
    (dict(files=[("file_a", ("a.png", b"A" * 10**6)), ("file_b", ("b.png", b"B" * 10**6))],
          data={"pad": "x" * 100_000}), 413, "payload_too_large", None),
])
async def test_a_bad_body_is_its_4xx(kwargs: dict, status: int, code: str, param: str | None) -> None:
    with pytest.raises((BadRequest, PayloadTooLarge, UnsupportedMediaType)) as e:
        await read_upload(post(**kwargs), **VERIFY)
    assert (e.value.status, e.value.code, e.value.param) == (status, code, param)


@pytest.mark.parametrize("images", [[], "Qw==", ["Qw=="] * 4])
async def test_json_crops_are_a_non_empty_list_within_the_limit(images: Any) -> None:
    with pytest.raises(BadRequest) as e:
        await read_upload(post(json={"images": images}), **EMBED)
    assert e.value.param == "images"


def test_check_images_names_the_first_bad_image() -> None:
    with pytest.raises(UnsupportedMediaType) as e:
        check_images([Part("images[0]", png()), Part("images[1]", b"text")], max_bytes=10**6, max_pixels=10**6)
    assert e.value.param == "images[1]"
