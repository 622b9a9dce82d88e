"""Embed routes: parse → lease → infer → response. Nothing else lives here.

The requests and responses are the embed family's contract (``modelhost.families.embed``): the text route
takes ``TextRequest`` (a value of the wrong type is 422), the image route ``EmbedForm`` beside its files;
``check_texts``, ``check_images`` and ``check_modality`` answer the bad values with their 400 codes.

Each input is its own item for the batcher, so one request's inputs and other requests' fill the same
batches (the model's ``max_batch``). The answer of up to 256 vectors is serialised off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from modelhost.app import host
from modelhost.decodes import DecodeSlots
from modelhost.errors import error_responses
from modelhost.families.embed import (IMAGE_PATH, TEXT_PATH, EmbedForm, EmbedResponse, EmbedTimings, Modality,
                                      TextRequest, check_images, check_modality, check_texts)

from .config import EmbedSettings
from .images import decode_image
from .items import Embedded, ImageItem, TextItem

router = APIRouter(tags=["embeddings"])

ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503)


@router.post(TEXT_PATH, response_model=EmbedResponse, responses=ERRORS)
async def embed_text(request: Request, body: TextRequest) -> Response:
    h = host(request)
    entry = h.runtime.entry(body.model)  # 404 for an unknown model
    check_modality(body.model, entry.spec.options, "text")
    check_texts(body.texts)
    t1 = time.perf_counter()
    results = await _infer(request, body.model, [TextItem(text=t) for t in body.texts])
    t2 = time.perf_counter()
    return await run_in_threadpool(_answer, body.model, "text", results, 0.0, (t2 - t1) * 1000)


@router.post(IMAGE_PATH, response_model=EmbedResponse, responses=ERRORS)
async def embed_images(
    request: Request,
    form: Annotated[EmbedForm, Form()],
    file: list[UploadFile] = File(default_factory=list, description="The images (repeat the field): JPEG, PNG, WebP, ..."),
) -> Response:
    h = host(request)
    settings: EmbedSettings = h.settings  # type: ignore[assignment]
    entry = h.runtime.entry(form.model)  # 404 for an unknown model before reading the uploads
    check_modality(form.model, entry.spec.options, "image")
    check_images(len(file))
    t0 = time.perf_counter()
    decodes: DecodeSlots = request.app.state.decodes

    async def decoded(i: int, upload: UploadFile) -> ImageItem:
        async with decodes.turn():  # the decode memory bound: read and decode in a turn
            data = await upload.read(settings.max_upload_bytes + 1)
            image = await run_in_threadpool(decode_image, data, max_bytes=settings.max_upload_bytes,
                                            max_pixels=settings.max_image_pixels, max_side=settings.max_image_side,
                                            max_decode_bytes=settings.max_decode_bytes,
                                            param="file" if len(file) == 1 else f"file.{i}")
            del data
        return ImageItem(image=image)

    # As many at once as the service decodes at once: more would only wait for a turn (and past the
    # waiting room a request's own images would be 429).
    items: list[ImageItem] = []
    for start in range(0, len(file), decodes.running):
        items += _first_failure(await asyncio.gather(
            *(decoded(i, f) for i, f in enumerate(file[start:start + decodes.running], start)), return_exceptions=True))
    t1 = time.perf_counter()
    results = await _infer(request, form.model, items)
    t2 = time.perf_counter()
    return await run_in_threadpool(_answer, form.model, "image", results, (t1 - t0) * 1000, (t2 - t1) * 1000)


async def _infer(request: Request, model: str, items: list[Any]) -> list[Embedded]:
    """Every item through the model's batcher under one lease; the first failure is the request's."""
    async with host(request).runtime.lease(model) as lease:
        return _first_failure(await asyncio.gather(*(lease.infer(item) for item in items), return_exceptions=True))


def _first_failure(results: list[Any]) -> list[Any]:
    """``results`` of a ``gather(..., return_exceptions=True)``, or the first failure in input order raised."""
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _answer(model: str, modality: Modality, results: list[Embedded], decode_ms: float, inference_ms: float) -> Response:
    vectors = np.stack([r.vector for r in results]).astype(np.float32)
    body = EmbedResponse(model=model, modality=modality, dim=int(vectors.shape[1]), embeddings=vectors.tolist(),
                         tokens=sum(r.tokens for r in results),
                         timings=EmbedTimings(decode_ms=decode_ms, inference_ms=inference_ms))
    return Response(body.model_dump_json(), media_type="application/json")
