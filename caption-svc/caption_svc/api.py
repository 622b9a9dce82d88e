"""Caption routes: parse → lease → infer → response. Nothing else lives here."""

from __future__ import annotations

import time

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from modelhost.app import host
from modelhost.errors import BadRequest

from .images import decode_image
from .items import CaptionItem
from .schemas import CaptionResponse, CaptionTimings

router = APIRouter(tags=["captions"])

MAX_PROMPT_CHARS = 2000


@router.post("/v1/captions", response_model=CaptionResponse)
async def caption(
    request: Request,
    file: UploadFile = File(..., description="The image: JPEG, PNG, WebP, ..."),
    model: str = Form(..., description="Catalog id of a caption model."),
    prompt: str | None = Form(None, description="Optional prompt or caption prefix."),
    max_new_tokens: int | None = Form(None, ge=1, le=512),
) -> CaptionResponse:
    h = host(request)
    settings = h.settings
    h.runtime.entry(model)  # 404 for an unknown model before reading the upload
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
    t0 = time.perf_counter()
    data = await file.read(settings.max_upload_bytes + 1)
    image = await run_in_threadpool(
        decode_image, data, max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_image_pixels, max_side=settings.max_image_side,
    )
    t1 = time.perf_counter()
    async with h.runtime.lease(model) as lease:
        result = await lease.infer(CaptionItem(image=image, prompt=prompt or None, max_new_tokens=max_new_tokens))
    t2 = time.perf_counter()
    return CaptionResponse(
        model=model, caption=result["caption"], tokens=result["tokens"], width=image.width, height=image.height,
        timings=CaptionTimings(decode_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000),
    )
