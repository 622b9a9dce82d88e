"""POST /v1/images/captions: multipart upload, or JSON with a base64 image."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from modelhost.client import ModelHostClient, multipart
from modelhost.errors import BadRequest, UnsupportedMediaType, request_id_of

from ..bodies import FORM_OVERHEAD_BYTES, decode_base64_field, parse_json_object, read_body
from ..images import check_image
from ..schemas import CaptionResponse
from ..state import gw

router = APIRouter(tags=["captions"])

FAMILY = "caption"


def _default_model(request: Request) -> str:
    g = gw(request)
    if g.settings.default_caption_model:
        return g.settings.default_caption_model
    for m in g.catalog.models:
        if m.family == FAMILY:
            return m.id
    raise BadRequest("no caption model is in the catalog; name one with 'model'", param="model")


def _optional_int(value: Any, param: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{param} must be an integer", param=param)
    if not 1 <= n <= 512:
        raise BadRequest(f"{param} must be between 1 and 512", param=param)
    return n


@router.post(
    "/v1/images/captions",
    response_model=CaptionResponse,
    summary="Caption an image",
    description="Multipart with a `file` field (and optional `model`, `prompt`, `max_new_tokens`), "
    "or JSON `{\"image\": \"<base64 or data URL>\", \"model\": ..., \"prompt\": ...}`.",
    openapi_extra={"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
            "prompt": {"type": "string"}, "max_new_tokens": {"type": "integer"}}}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "description": "base64, or a data: URL"}, "model": {"type": "string"},
            "prompt": {"type": "string"}, "max_new_tokens": {"type": "integer"}}}},
    }}},
)
async def caption(request: Request) -> Any:
    g = gw(request)
    limit = g.settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        await read_body(request, limit + FORM_OVERHEAD_BYTES)
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as e:  # python-multipart's parse errors
            raise BadRequest(f"the multipart body could not be parsed: {e}", code="invalid_multipart")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadRequest("the form needs a 'file' field holding the image", param="file", code="missing_file")
        data = await upload.read()
        fields = {k: form.get(k) for k in ("model", "prompt", "max_new_tokens")}
        fields = {k: (v if isinstance(v, str) else None) for k, v in fields.items()}
    elif ctype == "application/json":
        body = parse_json_object(await read_body(request, limit * 4 // 3 + FORM_OVERHEAD_BYTES))
        if "image" not in body:
            raise BadRequest("the JSON body needs 'image' (base64 or a data URL)", param="image", code="missing_image")
        data = decode_base64_field(body["image"], "image")
        fields = {k: body.get(k) for k in ("model", "prompt", "max_new_tokens")}
        for k in ("model", "prompt"):
            if fields[k] is not None and not isinstance(fields[k], str):
                raise BadRequest(f"{k} must be a string", param=k)
    else:
        raise UnsupportedMediaType(
            f"send multipart/form-data or application/json, not {ctype or 'no Content-Type'}", code="unsupported_content_type")

    model = fields["model"] or _default_model(request)
    g.access.spec(model, FAMILY)  # 404 before any work
    max_new_tokens = _optional_int(fields["max_new_tokens"], "max_new_tokens")
    check_image(data, max_bytes=limit, max_pixels=g.settings.max_image_pixels,
                param="file" if ctype == "multipart/form-data" else "image")
    rid = request_id_of(request)

    body, content_type = multipart(
        {"model": model, "prompt": fields["prompt"] or None,
         "max_new_tokens": None if max_new_tokens is None else str(max_new_tokens)},
        [("file", "image", data)])

    async def call(client: ModelHostClient) -> Any:
        return await client.request("POST", "/v1/captions", data=body, content_type=content_type,
                                    timeout_s=g.settings.request_timeout_s, request_id=rid)

    return await g.access.use(model, FAMILY, call)
