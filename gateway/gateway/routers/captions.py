"""POST /v1/images/captions: an image as a multipart upload (``file``) or base64 in JSON (``image``), with the
caption family's options (``modelhost.families.caption``).

Everything is checked here before the model is asked for (so a bad request never causes a swap): the body,
the fields, the model (404) and the image's header (format, bytes, pixels). The caption service decodes the
image fully and answers a corrupt one itself (``src: caption-svc``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from modelhost.errors import error_responses, request_id_of
from modelhost.families import caption, default_model, validated

from ..bodies import read_upload, request_body
from ..images import check_images
from ..routes import DirectRoute, json_response
from ..state import gw

router = APIRouter(tags=["captions"], route_class=DirectRoute)


class ModelField(BaseModel):
    model: str | None = Field(None, description="A caption model of the catalog; default: "
                                                "GATEWAY_DEFAULT_CAPTION_MODEL, else the catalog's first.")


class CaptionUpload(caption.CaptionOptions, ModelField):
    """The multipart form (what the OpenAPI document shows; the route reads the body itself)."""

    file: bytes = Field(description="The image: JPEG, PNG, WebP, GIF, BMP or TIFF.")


class CaptionJSON(caption.CaptionOptions, ModelField):
    """The JSON body."""

    image: str = Field(min_length=1, description="The image, base64 or a data: URL.")


FIELDS = (*ModelField.model_fields, *caption.CaptionOptions.model_fields)


@router.post(
    "/v1/images/captions", response_model=caption.CaptionResponse, summary="Caption an image",
    description="Multipart with a `file` field, or JSON with `image` (base64 or a data: URL); optionally "
    "`model`, `prompt` and `max_new_tokens`.",
    responses=error_responses(400, 401, 404, 413, 415, 429, 502, 503, 504),
    openapi_extra=request_body(multipart=CaptionUpload, json=CaptionJSON),
)
async def caption_image(request: Request) -> Response:
    g = gw(request)
    upload = await read_upload(request, images={"file": "image"}, fields=FIELDS, max_image_bytes=g.settings.max_upload_bytes)
    model = validated(ModelField, upload.fields).model or default_model(
        g.catalog.models, caption.FAMILY, g.settings.default_caption_model)
    g.access.spec(model, caption.FAMILY)  # 404 before any work
    options = validated(caption.CaptionOptions, upload.fields)
    check_images(upload.parts(), max_bytes=g.settings.max_upload_bytes, max_pixels=g.settings.max_image_pixels)
    async with g.access.hold(model, caption.FAMILY) as upstream:
        answer = await caption.caption(upstream, model, upload.one("file"), options,
                                       timeout_s=g.settings.request_timeout_s, request_id=request_id_of(request))
    return json_response(answer)
