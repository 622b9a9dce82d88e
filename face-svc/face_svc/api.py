"""Face routes: parse → lease → infer → response. Nothing else lives here.

The requests and responses are the face family's contract (``modelhost.families.face``): each form is its
``...Form`` model (a value of the wrong type is 422), the options are checked with ``DetectOptions`` and
``verify_options`` (400); what only this service knows (its ``max_faces``, whether a box lies in its image,
whether an image has a face) it checks here.

Coordinates: images are decoded upright and scaled down to ``max_image_side`` for the model; boxes and
landmarks go back to the client in the uploaded image's pixels, and given boxes come in them.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from modelhost.app import host
from modelhost.decodes import DecodeSlots
from modelhost.errors import BadRequest, error_responses
from modelhost.families import validated
from modelhost.families.face import (DetectForm, DetectOptions, EmbedForm, FaceDetection, FaceEmbeddings,
                                     FaceTimings, FaceVerification, VerifyForm, verify_options, verify_threshold)

from .config import FaceSettings
from .images import Decoded, decode_image, encode_png
from .items import DetectItem, EmbedItem

router = APIRouter(tags=["faces"])

ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503)


async def _decode(request: Request, upload: UploadFile, settings: FaceSettings, param: str) -> Decoded:
    decodes: DecodeSlots = request.app.state.decodes
    async with decodes.turn():  # the decode memory bound: read and decode in a turn
        data = await upload.read(settings.max_upload_bytes + 1)
        return await run_in_threadpool(decode_image, data, max_bytes=settings.max_upload_bytes,
                                       max_pixels=settings.max_image_pixels, max_side=settings.max_image_side,
                                       max_decode_bytes=settings.max_decode_bytes, param=param)


def _max_faces(value: int | None, limit: int) -> int:
    if value is None:
        return limit
    if not 1 <= value <= limit:
        raise BadRequest(f"max_faces must be between 1 and {limit}", param="max_faces")
    return value


def _box(box: list[float] | None, param: str, image: Decoded) -> tuple[float, float, float, float] | None:
    """A box (valid as such) in uploaded pixels → the box in the decoded image; 400 when it lies outside it."""
    if box is None:
        return None
    x1, y1, x2, y2 = max(0.0, box[0]), max(0.0, box[1]), min(float(image.width), box[2]), min(float(image.height), box[3])
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise BadRequest(f"{param} lies outside the {image.width}x{image.height} image", param=param, code="invalid_box")
    s = image.scale
    return (x1 * s, y1 * s, x2 * s, y2 * s)


def _point(v: float, scale: float) -> float:
    return round(v / scale, 2)


def _face_out(face: dict[str, Any], scale: float, *, embedding: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "box": [_point(v, scale) for v in face["box"]],
        "score": round(face["score"], 4),
        "landmarks": [[_point(x, scale), _point(y, scale)] for x, y in face["landmarks"]],
    }
    if embedding and face.get("embedding") is not None:
        out["embedding"] = face["embedding"].tolist()
    if embedding and face.get("crop") is not None:
        out["crop"] = base64.b64encode(encode_png(face["crop"])).decode()
    return out


@router.post("/v1/faces/detect", response_model=FaceDetection, response_model_exclude_none=True, responses=ERRORS)
async def detect(
    request: Request,
    form: Annotated[DetectForm, Form()],
    file: UploadFile = File(..., description="The image: JPEG, PNG, WebP, ..."),
) -> Any:
    h = host(request)
    settings: FaceSettings = h.settings  # type: ignore[assignment]
    model = form.model
    h.runtime.entry(model)  # 404 for an unknown model before reading the upload
    options = validated(DetectOptions, form.model_dump(exclude={"model"}))
    limit = _max_faces(options.max_faces, settings.max_faces)
    t0 = time.perf_counter()
    image = await _decode(request, file, settings, "file")
    t1 = time.perf_counter()
    async with h.runtime.lease(model) as lease:
        result = await lease.infer(DetectItem(image=image.pixels, max_faces=limit, embed=options.embed, crops=options.crops))
    t2 = time.perf_counter()
    faces = await run_in_threadpool(lambda: [_face_out(f, image.scale) for f in result["faces"]])
    return {
        "model": model, "faces": faces, "found": result["found"], "truncated": result["found"] > len(faces),
        "width": image.width, "height": image.height, "recognition_batch": result["recognition_batch"],
        "timings": FaceTimings(decode_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000),
    }


@router.post("/v1/faces/embed", response_model=FaceEmbeddings, responses=ERRORS)
async def embed(
    request: Request,
    form: Annotated[EmbedForm, Form()],
    file: list[UploadFile] = File(..., description="One or more aligned face crops (repeat the field), as detect's crops."),
) -> Any:
    h = host(request)
    settings: FaceSettings = h.settings  # type: ignore[assignment]
    model = form.model
    h.runtime.entry(model)
    if len(file) > settings.max_faces:
        raise BadRequest(f"{len(file)} crops sent; the limit is {settings.max_faces} per request", param="file",
                         code="too_many_crops")
    t0 = time.perf_counter()
    crops = [await _decode(request, f, settings, "file") for f in file]
    t1 = time.perf_counter()
    async with h.runtime.lease(model) as lease:
        result = await lease.infer(EmbedItem(crops=tuple(c.pixels for c in crops)))
    t2 = time.perf_counter()
    vectors = result["embeddings"]
    return {
        "model": model, "dim": int(vectors[0].shape[0]) if vectors else 0,
        "data": [{"index": i, "embedding": v.tolist()} for i, v in enumerate(vectors)],
        "recognition_batch": result["recognition_batch"],
        "timings": FaceTimings(decode_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000),
    }


@router.post("/v1/faces/verify", response_model=FaceVerification, responses=ERRORS)
async def verify(
    request: Request,
    form: Annotated[VerifyForm, Form()],
    file_a: UploadFile = File(..., description="The first image."),
    file_b: UploadFile = File(..., description="The second image."),
) -> Any:
    h = host(request)
    settings: FaceSettings = h.settings  # type: ignore[assignment]
    model = form.model
    spec = h.runtime.entry(model).spec
    threshold = verify_threshold(spec.backend, spec.options)
    options = verify_options(form.model_dump(exclude={"model"}))
    t0 = time.perf_counter()
    a = await _decode(request, file_a, settings, "file_a")
    b = await _decode(request, file_b, settings, "file_b")
    boxes = (_box(options.box_a, "box_a", a), _box(options.box_b, "box_b", b))
    items = [DetectItem(image=img.pixels, max_faces=1, embed=True, boxes=None if box is None else (box,))
             for img, box in ((a, boxes[0]), (b, boxes[1]))]
    t1 = time.perf_counter()
    async with h.runtime.lease(model) as lease:
        # Both submitted at once: they land in one batch, so both faces share one recognition pass.
        ra, rb = await asyncio.gather(lease.infer(items[0]), lease.infer(items[1]))
    t2 = time.perf_counter()
    faces = []
    for result, param, box in ((ra, "file_a", options.box_a), (rb, "file_b", options.box_b)):
        face = result["faces"][0] if result["faces"] else None
        if face is None:
            where = f"the box {param.replace('file', 'box')}" if box else "the image"
            raise BadRequest(f"no face found in {where} of {param}", param=param, code="no_face")
        faces.append(face)
    similarity = max(-1.0, min(1.0, float(faces[0]["embedding"] @ faces[1]["embedding"])))
    return {
        "model": model, "similarity": round(similarity, 6), "threshold": threshold,
        "verdict": "same" if similarity >= threshold else "different",
        "face_a": _face_out(faces[0], a.scale, embedding=False), "face_b": _face_out(faces[1], b.scale, embedding=False),
        "timings": FaceTimings(decode_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000),
    }
