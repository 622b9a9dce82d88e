"""Faces: the contract between the gateway (``/v1/faces/detect``, ``/embed``, ``/verify``, the ``faces``
job) and face-svc (the same three paths).

- ``DetectOptions`` and ``VerifyOptions``: what a request asks for beside its images and the model, with
  their limits; the gateway's routes, its jobs task and the service validate with them (400 naming the
  field; a bad box is ``invalid_box``, see ``verify_options``).
- ``DetectForm``, ``EmbedForm``, ``VerifyForm``: the service's forms beside the files, as the calls below
  send them. Types only: a value of the wrong type is 422 at the service, as FastAPI answers it.
- ``FaceDetection``, ``FaceEmbeddings``, ``FaceVerification``: what the service answers and the gateway returns.
- ``detect()``, ``embed()``, ``verify()``: the upstream calls.

A box is a list ``[x1, y1, x2, y2]`` in pixels of the uploaded (upright) image, from the client to the
service: the calls send it as a JSON list. A form field may also carry it as the text ``x1,y1,x2,y2``.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Mapping, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..errors import BadRequest
from . import Requester, not_a_bool, post_form, validated

FAMILY = "face"
MAX_FACES = 1024
"""Most faces one detect may ask for and most crops one embed may carry, at any face service; a service's
own limit (FACE_SVC_MAX_FACES, at most this) is usually lower and answers 400 above it."""

VERIFY_THRESHOLDS = {
    # ArcFace-style recognisers (w600k_r50 in buffalo_l): 0.4 is a common operating point; tune it on your photos.
    "insightface": 0.4,
    # dlib's ResNet: its documented "same" rule is Euclidean distance < 0.6 between raw descriptors; their
    # norms are about 1.45 (measured), which makes that a cosine similarity of about 0.92.
    "dlib": 0.92,
    # OpenCV's SFace (YuNet + SFace, 128-d): OpenCV's documented cosine cut-off (samples/dnn/face_detect.py
    # and its face detection tutorial: the same identity at cosine similarity >= 0.363).
    "yunet_sface": 0.363,
}
"""The cosine similarity at which two faces are one person, per backend, where the catalog's model has no
``verify_threshold`` option. Embeddings differ per model: set it per model in the catalog."""


def verify_threshold(backend: str, options: Mapping[str, Any]) -> float:
    """The similarity at which verify says "same": the model's ``verify_threshold``, else its backend's."""
    return float(options.get("verify_threshold", VERIFY_THRESHOLDS.get(backend, 0.5)))


def _blank_is_none(value: Any) -> Any:
    """A form sends an empty field for one left out."""
    return None if value == "" else value


def _box(value: Any) -> list[float]:
    """``[x1, y1, x2, y2]`` from a list of four numbers, or from a form's text: ``x1,y1,x2,y2`` or a JSON list."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except ValueError:
            value = None
    try:
        if not isinstance(value, (list, tuple)) or len(value) != 4 or any(isinstance(v, bool) for v in value):
            raise ValueError
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise PydanticCustomError("invalid_box", "must be four finite numbers x1,y1,x2,y2 with x2 > x1 and y2 > y1")
    return box


Box = Annotated[list[float], BeforeValidator(_box), WithJsonSchema({
    "anyOf": [{"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
              {"type": "string", "description": "x1,y1,x2,y2 (a form field)"}],
    "description": "x1, y1, x2, y2 in pixels of the uploaded image, upright, with x2 > x1 and y2 > y1."})]


class DetectOptions(BaseModel):
    """What a detect asks for beside the image and the model."""

    embed: bool = Field(False, description="Add each face's L2-normalised embedding.")
    crops: bool = Field(False, description="Add each face's aligned crop, base64 PNG: what /v1/faces/embed takes.")
    max_faces: Annotated[int | None, BeforeValidator(_blank_is_none), BeforeValidator(not_a_bool)] = Field(
        None, ge=1, le=MAX_FACES, description="Most faces to report, largest first; default and limit: the "
        "service's FACE_SVC_MAX_FACES.")


class VerifyOptions(BaseModel):
    """What a verify asks for beside the two images and the model."""

    box_a: Annotated[Box | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="The face to compare in the first image; default: its largest face.")
    box_b: Annotated[Box | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="The face to compare in the second image; default: its largest face.")


def verify_options(values: Mapping[str, Any]) -> VerifyOptions:
    """``values`` as ``VerifyOptions``, or 400 ``invalid_box`` naming the first bad box."""
    try:
        return validated(VerifyOptions, dict(values))
    except BadRequest as e:
        raise BadRequest(e.message, param=e.param, code="invalid_box") from None


class DetectForm(BaseModel):
    """The face service's detect form beside ``file``."""

    model: str = Field(description="Catalog id of a face model.")
    embed: bool = Field(False, description="Add each face's normalised embedding.")
    crops: bool = Field(False, description="Add each face's aligned crop (base64 PNG).")
    max_faces: int | None = Field(None, description="Most faces to report, largest first.")


class EmbedForm(BaseModel):
    """The face service's embed form beside the crops (``file``, repeated)."""

    model: str = Field(description="Catalog id of a face model: the one whose detect made the crops.")


class VerifyForm(BaseModel):
    """The face service's verify form beside ``file_a`` and ``file_b``."""

    model: str = Field(description="Catalog id of a face model.")
    box_a: str | None = Field(None, description="The face to use in file_a: a JSON list [x1, y1, x2, y2] "
                                                "(or x1,y1,x2,y2); default: its largest face.")
    box_b: str | None = Field(None, description="The face to use in file_b; default: its largest face.")


class FaceTimings(BaseModel):
    decode_ms: float = Field(description="Time the face service took to read and decode the image(s).")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class VerifiedFace(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the uploaded image, upright (EXIF applied).")
    score: float = Field(description="Detector score (dlib, for a given box nothing matched: 0).")
    landmarks: list[list[float]] = Field(
        description="Five [x, y] points: left eye, right eye, nose tip, left and right mouth corner, as seen.")


class Face(VerifiedFace):
    embedding: list[float] | None = Field(None, description="L2-normalised embedding (with embed=true).")
    crop: str | None = Field(None, description="Aligned face crop, base64 PNG (with crops=true): what "
                                               "/v1/faces/embed takes.")


class FaceDetection(BaseModel):
    object: str = "face.detection"
    model: str
    faces: list[Face] = Field(description="Largest first; [] when the image has no face.")
    found: int = Field(description="Faces the detector found, before the max_faces cut.")
    truncated: bool = Field(description="Whether faces were left out by max_faces.")
    width: int = Field(description="Width of the uploaded image, upright (EXIF orientation applied).")
    height: int
    recognition_batch: int = Field(
        description="Faces in the recognition pass that embedded this image's faces (0: none embedded).")
    timings: FaceTimings


class FaceEmbedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float]


class FaceEmbeddings(BaseModel):
    object: str = "list"
    model: str
    data: list[FaceEmbedding] = Field(description="One normalised embedding per crop, in order.")
    dim: int
    recognition_batch: int = Field(description="Crops in the recognition pass that embedded these crops.")
    timings: FaceTimings


class FaceVerification(BaseModel):
    object: str = "face.verification"
    model: str
    similarity: float = Field(description="Cosine similarity of the two faces' embeddings, -1 to 1.")
    threshold: float = Field(description="The model's threshold: catalog option verify_threshold, else its backend's.")
    verdict: str = Field(description='"same" when similarity >= threshold, else "different".')
    face_a: VerifiedFace
    face_b: VerifiedFace
    timings: FaceTimings


R = TypeVar("R", bound=BaseModel)


async def detect(upstream: Requester, model: str, image: bytes, options: DetectOptions, *, timeout_s: float,
                 request_id: str | None = None) -> FaceDetection:
    """The faces of ``image``; the service's errors as the ``Upstream`` maps them, an answer that does not
    fit as 502."""
    form = DetectForm(model=model, embed=options.embed, crops=options.crops, max_faces=options.max_faces)
    return await post_form(upstream, "/v1/faces/detect", form, [("file", "image", image)], FaceDetection,
                           service="face-svc", timeout_s=timeout_s, request_id=request_id)


async def embed(upstream: Requester, model: str, crops: list[bytes], *, timeout_s: float,
                request_id: str | None = None) -> FaceEmbeddings:
    """One embedding per aligned crop (as ``detect`` returns them with ``crops``), in order."""
    files = [("file", f"crop{i}", crop) for i, crop in enumerate(crops)]
    return await post_form(upstream, "/v1/faces/embed", EmbedForm(model=model), files, FaceEmbeddings,
                           service="face-svc", timeout_s=timeout_s, request_id=request_id)


async def verify(upstream: Requester, model: str, image_a: bytes, image_b: bytes, options: VerifyOptions, *,
                 timeout_s: float, request_id: str | None = None) -> FaceVerification:
    """Whether the face of ``image_a`` and the face of ``image_b`` (the largest, or the one in the box) are
    one person."""
    form = VerifyForm(model=model, box_a=None if options.box_a is None else json.dumps(options.box_a),
                      box_b=None if options.box_b is None else json.dumps(options.box_b))
    return await post_form(upstream, "/v1/faces/verify", form, [("file_a", "a", image_a), ("file_b", "b", image_b)],
                           FaceVerification, service="face-svc", timeout_s=timeout_s, request_id=request_id)
