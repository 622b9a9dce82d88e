"""POST /v1/faces/detect, /v1/faces/embed, /v1/faces/verify: multipart uploads, or JSON with base64 images.

Every input is checked here before the model is asked for (so a bad request never causes a swap): the body
size, the form or JSON, each image's header (format, bytes, pixels), the flags, numbers and boxes. What
only the face service knows (its faces-per-image limit, whether an image really decodes) it checks itself,
still before any inference, and its envelope is passed on.

| route | multipart fields | JSON |
| --- | --- | --- |
| detect | ``file``, ``model``, ``embed``, ``crops``, ``max_faces`` | ``image`` (base64 or data URL), same others |
| embed | ``file`` (repeated: one per aligned crop), ``model`` | ``images`` (list of base64), ``model`` |
| verify | ``file_a``, ``file_b``, ``model``, ``box_a``, ``box_b`` | ``image_a``, ``image_b``, ``model``, ``box_a``, ``box_b`` |

Boxes are ``x1,y1,x2,y2`` in a form and a list of four numbers in JSON. ``model`` defaults to
``GATEWAY_DEFAULT_FACE_MODEL``, else the catalog's first face model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile

from modelhost.client import ModelHostClient
from modelhost.errors import BadRequest, UnsupportedMediaType, request_id_of

from ..bodies import FORM_OVERHEAD_BYTES, decode_base64_field, parse_json_object, read_body
from ..face_schemas import FaceDetection, FaceEmbeddings, FaceVerification
from ..images import check_image
from ..state import Gateway, gw

router = APIRouter(tags=["faces"])

FAMILY = "face"
MAX_CROPS = 1024
"""Most crops one embed request may carry here (the form parser's bound); the face service's own limit
(FACE_SVC_MAX_FACES) is usually lower and answers 400 too_many_crops."""


@dataclass
class _Upload:
    multipart: bool
    images: dict[str, list[bytes]]
    """Per multipart field name (``file``, ``file_a`` ...): the images, checked."""
    fields: dict[str, Any]


async def _read(request: Request, g: Gateway, *, images: dict[str, str], many: str | None, fields: tuple[str, ...]) -> _Upload:
    """Read a multipart or JSON body. ``images`` maps each multipart image field to its JSON name; ``many``
    names the one field that may repeat (a list in JSON)."""
    limit = g.settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    found: dict[str, list[bytes]] = {}
    # The body may hold one upload's worth of bytes per image field (the crops of embed share one).
    if ctype == "multipart/form-data":
        await read_body(request, limit * len(images) + FORM_OVERHEAD_BYTES)
        try:
            form = await request.form(max_files=(MAX_CROPS if many else len(images)) + 1, max_fields=16)
        except Exception as e:  # python-multipart's parse errors, and too many files
            raise BadRequest(f"the multipart body could not be parsed: {e}", code="invalid_multipart")
        for name in images:
            uploads = [u for u in form.getlist(name) if isinstance(u, UploadFile)]
            if not uploads:
                raise BadRequest(f"the form needs a '{name}' field holding an image", param=name, code="missing_file")
            if len(uploads) > 1 and name != many:
                raise BadRequest(f"send one '{name}' file", param=name)
            found[name] = [await u.read() for u in uploads]
        values = {k: form.get(k) for k in fields}
        values = {k: (v if isinstance(v, str) and v != "" else None) for k, v in values.items()}
        return _Upload(True, found, values)
    if ctype == "application/json":
        body = parse_json_object(await read_body(request, limit * 4 // 3 * len(images) + FORM_OVERHEAD_BYTES))
        for name, key in images.items():
            if key not in body:
                raise BadRequest(f"the JSON body needs '{key}' (base64 or a data URL)", param=key, code="missing_image")
            value = body[key]
            if name == many:
                if not isinstance(value, list) or not value:
                    raise BadRequest(f"'{key}' must be a non-empty list of base64 images", param=key)
                if len(value) > MAX_CROPS:
                    raise BadRequest(f"{len(value)} images sent; the limit is {MAX_CROPS}", param=key, code="too_many_crops")
                found[name] = [decode_base64_field(v, f"{key}[{i}]") for i, v in enumerate(value)]
            else:
                found[name] = [decode_base64_field(value, key)]
        return _Upload(False, found, {k: body.get(k) for k in fields})
    raise UnsupportedMediaType(
        f"send multipart/form-data or application/json, not {ctype or 'no Content-Type'}", code="unsupported_content_type")


def _model(g: Gateway, value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise BadRequest("model must be a string", param="model")
    model = value or g.settings.default_face_model
    if not model:
        model = next((m.id for m in g.catalog.models if m.family == FAMILY), None)
        if model is None:
            raise BadRequest("no face model is in the catalog; name one with 'model'", param="model")
    g.access.spec(model, FAMILY)  # 404 before any work
    return model


def _check_images(g: Gateway, upload: _Upload, json_names: dict[str, str], many: str | None = None) -> None:
    """Each image's header: 415, 413 or 400 naming it (``file``, ``file_b``, ``images[3]`` ...)."""
    for name, blobs in upload.images.items():
        base = name if upload.multipart else json_names[name]
        for i, data in enumerate(blobs):
            param = f"{base}[{i}]" if name == many and (len(blobs) > 1 or not upload.multipart) else base
            check_image(data, max_bytes=g.settings.max_upload_bytes, max_pixels=g.settings.max_image_pixels, param=param)


def _flag(value: Any, param: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise BadRequest(f"{param} must be true or false", param=param)


def _count(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"{param} must be an integer", param=param)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{param} must be an integer", param=param)
    if n < 1 or (isinstance(value, float) and value != n):
        raise BadRequest(f"{param} must be a positive integer", param=param)
    return n


def _box(value: Any, param: str) -> str | None:
    """A box as the service takes it (``x1,y1,x2,y2``), from ``"x1,y1,x2,y2"`` or ``[x1, y1, x2, y2]``."""
    if value is None:
        return None
    try:
        numbers = value.split(",") if isinstance(value, str) else value
        box = [float(v) for v in numbers] if isinstance(numbers, list) and not any(isinstance(v, bool) for v in numbers) else []
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise BadRequest(f"{param} must be four finite numbers x1,y1,x2,y2 with x2 > x1 and y2 > y1",
                         param=param, code="invalid_box")
    return ",".join(repr(v) for v in box)


async def _forward(g: Gateway, request: Request, model: str, path: str, files: dict[str, list[bytes]],
                   fields: dict[str, str | None]) -> Any:
    rid = request_id_of(request)

    async def call(client: ModelHostClient) -> Any:
        form = aiohttp.FormData()
        for name, blobs in files.items():
            for i, data in enumerate(blobs):
                form.add_field(name, data, filename=f"{name}{i}", content_type="application/octet-stream")
        form.add_field("model", model)
        for name, value in fields.items():
            if value is not None:
                form.add_field(name, value)
        return await client.request("POST", path, data=form, timeout_s=g.settings.request_timeout_s, request_id=rid)

    return await g.access.use(model, FAMILY, call)


def _body_doc(multipart: dict[str, Any], json: dict[str, Any], required: tuple[list[str], list[str]]) -> dict[str, Any]:
    return {"requestBody": {"content": {
        "multipart/form-data": {"schema": {"type": "object", "required": required[0], "properties": multipart}},
        "application/json": {"schema": {"type": "object", "required": required[1], "properties": json}},
    }}}


BINARY = {"type": "string", "format": "binary"}
B64 = {"type": "string", "description": "base64, or a data: URL"}
BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "description": "x1, y1, x2, y2"}
STR, BOOL, INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer", "minimum": 1}


@router.post(
    "/v1/faces/detect", response_model=FaceDetection, response_model_exclude_none=True, summary="Find the faces in an image",
    description="Boxes, scores and five landmarks per face, largest first; optionally each face's normalised "
    "embedding (`embed`) and aligned crop (`crops`, base64 PNG). An image without faces gives `faces: []`.",
    openapi_extra=_body_doc({"file": BINARY, "model": STR, "embed": BOOL, "crops": BOOL, "max_faces": INT},
                            {"image": B64, "model": STR, "embed": BOOL, "crops": BOOL, "max_faces": INT}, (["file"], ["image"])),
)
async def detect(request: Request) -> Any:
    g = gw(request)
    names = {"file": "image"}
    upload = await _read(request, g, images=names, many=None, fields=("model", "embed", "crops", "max_faces"))
    f = upload.fields
    model = _model(g, f["model"])
    embed, crops = _flag(f["embed"], "embed"), _flag(f["crops"], "crops")
    max_faces = _count(f["max_faces"], "max_faces")
    _check_images(g, upload, names)
    return await _forward(g, request, model, "/v1/faces/detect", upload.images, {
        "embed": "true" if embed else None, "crops": "true" if crops else None,
        "max_faces": None if max_faces is None else str(max_faces)})


@router.post(
    "/v1/faces/embed", response_model=FaceEmbeddings, summary="Embed aligned face crops",
    description="One normalised embedding per crop, in order (OpenAI's embeddings shape). Send the crops that "
    "/v1/faces/detect returned with `crops=true` for the same model.",
    openapi_extra=_body_doc({"file": {"type": "array", "items": BINARY}, "model": STR},
                            {"images": {"type": "array", "items": B64}, "model": STR}, (["file"], ["images"])),
)
async def embed(request: Request) -> Any:
    g = gw(request)
    names = {"file": "images"}
    upload = await _read(request, g, images=names, many="file", fields=("model",))
    model = _model(g, upload.fields["model"])
    _check_images(g, upload, names, many="file")
    return await _forward(g, request, model, "/v1/faces/embed", upload.images, {})


@router.post(
    "/v1/faces/verify", response_model=FaceVerification, summary="Are two faces the same person?",
    description="The largest face of each image (or the faces in `box_a` / `box_b`): cosine similarity of their "
    "embeddings and a verdict against the model's threshold (catalog `options.verify_threshold`). An image "
    "without a face (in its box) is 400 `no_face`.",
    openapi_extra=_body_doc({"file_a": BINARY, "file_b": BINARY, "model": STR, "box_a": STR, "box_b": STR},
                            {"image_a": B64, "image_b": B64, "model": STR, "box_a": BOX, "box_b": BOX},
                            (["file_a", "file_b"], ["image_a", "image_b"])),
)
async def verify(request: Request) -> Any:
    g = gw(request)
    names = {"file_a": "image_a", "file_b": "image_b"}
    upload = await _read(request, g, images=names, many=None, fields=("model", "box_a", "box_b"))
    f = upload.fields
    model = _model(g, f["model"])
    boxes = {"box_a": _box(f["box_a"], "box_a"), "box_b": _box(f["box_b"], "box_b")}
    _check_images(g, upload, names)
    return await _forward(g, request, model, "/v1/faces/verify", upload.images, boxes)
