"""Reading request bodies with a size limit, before any parsing; an upload of images as a multipart form or
a JSON object with base64 images (``read_upload``); and the OpenAPI of such a body (``request_body``)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple

from fastapi import Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

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
    """The body as a JSON object, or 400 ``invalid_json``: not JSON, not an object, or nested deeper than
    the parser's recursion limit (about a thousand levels; no request of ours nests more than four)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON: {e}", code="invalid_json")
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply", code="invalid_json") from None
    if not isinstance(value, dict):
        raise BadRequest("the JSON body must be an object", code="invalid_json")
    return value


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """A JSON route's body: 415 ``unsupported_content_type`` unless it is declared JSON (a ``text/plain``
    body is not read as JSON), 413 past ``limit``, 400 when it is not a JSON object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(f"send application/json, not {ctype or 'no Content-Type'}",
                                   code="unsupported_content_type")
    return parse_json_object(await read_body(request, limit))


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


class Part(NamedTuple):
    param: str
    """The field as an error names it: ``file``, ``image_b``, ``images[3]``."""
    data: bytes


@dataclass
class Upload:
    """Images and fields, from a multipart form or a JSON object."""

    images: dict[str, list[Part]]
    """Per image field, by its multipart name (``file``, ``file_a`` ...): its images, in order."""
    fields: dict[str, Any]
    """The other fields sent, blank and null ones left out: a form's strings (a list where a field is
    repeated), or the JSON values."""

    def one(self, name: str) -> bytes:
        return self.images[name][0].data

    def parts(self) -> Iterator[Part]:
        for parts in self.images.values():
            yield from parts


async def read_upload(request: Request, *, images: dict[str, str], fields: Iterable[str], max_image_bytes: int,
                      many: str | None = None, max_many: int = 1, max_fields: int = 16) -> Upload:
    """A ``multipart/form-data`` or ``application/json`` body, else 415.

    ``images`` maps each multipart image field to its JSON name (``{"file": "image"}``): a file in the form,
    base64 or a data URL in JSON; each is required (400 ``missing_file`` / ``missing_image``). ``many`` names
    the one that may repeat, up to ``max_many`` images (a list in JSON). The body may hold one image's worth
    of bytes per image field (413 past that) and the form's framing, and at most ``max_fields`` other form
    fields (400 past that). Only ``fields`` are read of the rest."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    found: dict[str, list[Part]] = {}
    if ctype == "multipart/form-data":
        await read_body(request, max_image_bytes * len(images) + FORM_OVERHEAD_BYTES)
        try:
            form = await request.form(max_files=(max_many if many else len(images)) + 1, max_fields=max_fields)
        except Exception as e:  # python-multipart's parse errors, and too many files
            raise BadRequest(f"the multipart body could not be parsed: {e}", code="invalid_multipart")
        for name in images:
            uploads = [u for u in form.getlist(name) if isinstance(u, UploadFile)]
            if not uploads:
                raise BadRequest(f"the form needs a '{name}' field holding an image", param=name, code="missing_file")
            if len(uploads) > 1 and name != many:
                raise BadRequest(f"send one '{name}' file", param=name)
            named = name != many or len(uploads) == 1
            found[name] = [Part(name if named else f"{name}[{i}]", await u.read()) for i, u in enumerate(uploads)]
        values: dict[str, Any] = {}
        for k in fields:
            sent = [v for v in form.getlist(k) if isinstance(v, str) and v != ""]
            if sent:
                values[k] = sent[0] if len(sent) == 1 else sent
        return Upload(found, values)
    if ctype == "application/json":
        body = parse_json_object(await read_body(request, max_image_bytes * 4 // 3 * len(images) + FORM_OVERHEAD_BYTES))
        for name, key in images.items():
            if key not in body:
                raise BadRequest(f"the JSON body needs '{key}' (base64 or a data URL)", param=key, code="missing_image")
            value = body[key]
            if name != many:
                found[name] = [Part(key, decode_base64_field(value, key))]
                continue
            if not isinstance(value, list) or not value:
                raise BadRequest(f"'{key}' must be a non-empty list of base64 images", param=key)
            if len(value) > max_many:
                raise BadRequest(f"{len(value)} images sent; the limit is {max_many}", param=key, code="too_many_images")
            found[name] = [Part(f"{key}[{i}]", decode_base64_field(v, f"{key}[{i}]")) for i, v in enumerate(value)]
        return Upload(found, {k: body[k] for k in fields if body.get(k) is not None})
    raise UnsupportedMediaType(
        f"send multipart/form-data or application/json, not {ctype or 'no Content-Type'}", code="unsupported_content_type")


def request_body(*, multipart: type[BaseModel], json: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads its body itself, taking it as a form or as JSON: the two
    schemas generated from the models (FastAPI declares one content type per body)."""
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": multipart.model_json_schema()},
        "application/json": {"schema": json.model_json_schema()},
    }}}


def json_request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads its JSON body itself: the model's schema, with the
    schemas it nests written in place (a ``$defs`` reference would not resolve inside the document)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
