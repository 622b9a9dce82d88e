"""Caption routes: parse → lease → infer → response. Nothing else lives here.

The request and response are the caption family's contract (``modelhost.families.caption``): the form is
``CaptionForm`` (a value of the wrong type is 422), its options are checked with ``CaptionOptions`` (400)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from modelhost.app import host
from modelhost.decodes import DecodeSlots
from modelhost.errors import PromptTooLong, error_responses
from modelhost.families import validated
from modelhost.families.caption import CaptionForm, CaptionOptions, CaptionResponse, CaptionTimings

from .images import decode_image
from .items import CaptionItem, PromptFillsContext

router = APIRouter(tags=["captions"])


@router.post("/v1/captions", response_model=CaptionResponse, responses=error_responses(400, 404, 413, 415, 422, 429, 503))
async def caption(
    request: Request,
    form: Annotated[CaptionForm, Form()],
    file: UploadFile = File(..., description="The image: JPEG, PNG, WebP, ..."),
) -> CaptionResponse:
    h = host(request)
    settings = h.settings
    h.runtime.entry(form.model)  # 404 for an unknown model before reading the upload
    options = validated(CaptionOptions, form.model_dump(exclude={"model"}))
    t0 = time.perf_counter()
    decodes: DecodeSlots = request.app.state.decodes
    async with decodes.turn():  # the decode memory bound: read and decode in a turn
        data = await file.read(settings.max_upload_bytes + 1)
        image = await run_in_threadpool(decode_image, data, max_bytes=settings.max_upload_bytes,
                                        max_pixels=settings.max_image_pixels, max_side=settings.max_image_side,
                                        max_decode_bytes=settings.max_decode_bytes)
        del data
    t1 = time.perf_counter()
    async with h.runtime.lease(form.model) as lease:
        result = await lease.infer(CaptionItem(image=image, prompt=options.prompt, max_new_tokens=options.max_new_tokens))
    t2 = time.perf_counter()
    if isinstance(result, PromptFillsContext):
        raise PromptTooLong(
            f"the prompt takes {result.prompt_tokens} of the {result.context_tokens} token positions model "
            f"{form.model} has for prompt and caption together (its own start and image tokens included), "
            "leaving none for the caption; shorten it", param="prompt")
    return CaptionResponse(
        model=form.model, caption=result["caption"], tokens=result["tokens"], width=image.width, height=image.height,
        timings=CaptionTimings(decode_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000),
    )
