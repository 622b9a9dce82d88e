"""POST /v1/faces/detect, /v1/faces/embed, /v1/faces/verify: multipart uploads, or JSON with base64 images,
with the face family's options (``modelhost.families.face``).

Every input is checked here before the model is asked for (so a bad request never causes a swap): the body
size, the form or JSON, the fields (boxes: 400 ``invalid_box``), the model (404) and each image's header
(format, bytes, pixels). What only the face service knows (its faces-per-image limit, whether an image really
decodes, whether a box lies in its image) it checks itself, still before any inference, and its envelope is
passed on.

| route | multipart fields | JSON |
| --- | --- | --- |
| detect | ``file``, ``model``, ``embed``, ``crops``, ``max_faces`` | ``image`` (base64 or data URL), same others |
| embed | ``file`` (repeated: one per aligned crop), ``model`` | ``images`` (list of base64), ``model`` |
| verify | ``file_a``, ``file_b``, ``model``, ``box_a``, ``box_b`` | ``image_a``, ``image_b``, ``model``, ``box_a``, ``box_b`` |

A box is a list of four numbers in JSON; in a form, ``x1,y1,x2,y2`` (or the field four times). ``model``
defaults to ``GATEWAY_DEFAULT_FACE_MODEL``, else the catalog's first face model.

The routes are ``DirectRoute``s: each returns its Response, and ``routes.DirectApp`` serves them on its lane.
"""

from __future__ import annotations

from typing import Annotated, Iterable

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from modelhost.errors import error_responses, request_id_of
from modelhost.families import default_model, face, validated

from ..bodies import Upload, read_upload, request_body
from ..images import check_images
from ..routes import DirectRoute, json_response
from ..state import Gateway, gw

router = APIRouter(tags=["faces"], route_class=DirectRoute)

ERRORS = error_responses(400, 401, 404, 413, 415, 429, 502, 503, 504)


class ModelField(BaseModel):
    model: str | None = Field(None, description="A face model of the catalog; default: GATEWAY_DEFAULT_FACE_MODEL, "
                                                "else the catalog's first.")


# The bodies as the OpenAPI document shows them (each route reads its body itself).

class DetectUpload(face.DetectOptions, ModelField):
    file: bytes = Field(description="The image: JPEG, PNG, WebP, GIF, BMP or TIFF.")


class DetectJSON(face.DetectOptions, ModelField):
    image: str = Field(min_length=1, description="The image, base64 or a data: URL.")


class EmbedUpload(ModelField):
    file: list[bytes] = Field(min_length=1, max_length=face.MAX_FACES,
                              description="The aligned face crops, one per part (repeat the field).")


class EmbedJSON(ModelField):
    images: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=face.MAX_FACES,
                              description="The aligned face crops, each base64 or a data: URL.")


class VerifyUpload(face.VerifyOptions, ModelField):
    file_a: bytes = Field(description="The first image.")
    file_b: bytes = Field(description="The second image.")


class VerifyJSON(face.VerifyOptions, ModelField):
    image_a: str = Field(min_length=1, description="The first image, base64 or a data: URL.")
    image_b: str = Field(min_length=1, description="The second image, base64 or a data: URL.")


async def _read(request: Request, g: Gateway, images: dict[str, str], options: Iterable[str],
                many: str | None = None) -> tuple[Upload, str]:
    """The body, its model (404 for an unknown one) and its images' headers checked: (upload, model)."""
    upload = await read_upload(request, images=images, fields=(*ModelField.model_fields, *options),
                               max_image_bytes=g.settings.max_upload_bytes, many=many, max_many=face.MAX_FACES)
    model = validated(ModelField, upload.fields).model or default_model(
        g.catalog.models, face.FAMILY, g.settings.default_face_model)
    g.access.spec(model, face.FAMILY)  # 404 before any work
    return upload, model


def _check_images(g: Gateway, upload: Upload) -> None:
    check_images(upload.parts(), max_bytes=g.settings.max_upload_bytes, max_pixels=g.settings.max_image_pixels)


@router.post(
    "/v1/faces/detect", response_model=face.FaceDetection, response_model_exclude_none=True,
    summary="Find the faces in an image",
    description="Boxes, scores and five landmarks per face, largest first; optionally each face's normalised "
    "embedding (`embed`) and aligned crop (`crops`, base64 PNG). An image without faces gives `faces: []`.",
    responses=ERRORS, openapi_extra=request_body(multipart=DetectUpload, json=DetectJSON),
)
async def detect(request: Request) -> Response:
    g = gw(request)
    upload, model = await _read(request, g, {"file": "image"}, face.DetectOptions.model_fields)
    options = validated(face.DetectOptions, upload.fields)
    _check_images(g, upload)
    async with g.access.hold(model, face.FAMILY) as upstream:
        answer = await face.detect(upstream, model, upload.one("file"), options,
                                   timeout_s=g.settings.request_timeout_s, request_id=request_id_of(request))
    return json_response(answer, exclude_none=True)


@router.post(
    "/v1/faces/embed", response_model=face.FaceEmbeddings, summary="Embed aligned face crops",
    description="One normalised embedding per crop, in order (OpenAI's embeddings shape). Send the crops that "
    "/v1/faces/detect returned with `crops=true` for the same model.",
    responses=ERRORS, openapi_extra=request_body(multipart=EmbedUpload, json=EmbedJSON),
)
async def embed(request: Request) -> Response:
    g = gw(request)
    upload, model = await _read(request, g, {"file": "images"}, (), many="file")
    _check_images(g, upload)
    async with g.access.hold(model, face.FAMILY) as upstream:
        answer = await face.embed(upstream, model, [p.data for p in upload.images["file"]],
                                  timeout_s=g.settings.request_timeout_s, request_id=request_id_of(request))
    return json_response(answer)


@router.post(
    "/v1/faces/verify", response_model=face.FaceVerification, summary="Are two faces the same person?",
    description="The largest face of each image (or the faces in `box_a` / `box_b`): cosine similarity of their "
    "embeddings and a verdict against the model's threshold (catalog `options.verify_threshold`). An image "
    "without a face (in its box) is 400 `no_face`.",
    responses=ERRORS, openapi_extra=request_body(multipart=VerifyUpload, json=VerifyJSON),
)
async def verify(request: Request) -> Response:
    g = gw(request)
    upload, model = await _read(request, g, {"file_a": "image_a", "file_b": "image_b"}, face.VerifyOptions.model_fields)
    options = face.verify_options(upload.fields)
    _check_images(g, upload)
    async with g.access.hold(model, face.FAMILY) as upstream:
        answer = await face.verify(upstream, model, upload.one("file_a"), upload.one("file_b"), options,
                                   timeout_s=g.settings.request_timeout_s, request_id=request_id_of(request))
    return json_response(answer)
