"""Reading request bodies with a size limit, before any parsing."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import Request

from modelhost.errors import BadRequest, PayloadTooLarge

# Multipart framing and the small form fields around the file.
FORM_OVERHEAD_BYTES = 64 * 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes ``limit`` (Content-Length checked first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"the request body has {declared} bytes; the limit is {limit}")
        except ValueError:
            raise BadRequest("Content-Length is not a number", code="bad_content_length")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was already read
    return body


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json")
    if not isinstance(value, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_json")
    return value


def decode_base64_field(value: Any, param: str) -> bytes:
    """Plain base64 or a ``data:<mime>;base64,...`` URL."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{param} must be a non-empty base64 string", param=param, code="invalid_base64")
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or ";base64" not in header:
            raise BadRequest(f"{param} is a data URL without ';base64,'", param=param, code="invalid_base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{param} is not valid base64: {e}", param=param, code="invalid_base64")
