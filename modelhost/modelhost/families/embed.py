"""Embeddings: the contract between the gateway (``/v1/embeddings``, ``/v1/search``, the ``embed`` job) and
embed-svc (``POST /v1/embed/text``, ``POST /v1/embed/images``).

- ``TextRequest``: the JSON the text route takes, as ``embed_texts()`` sends it. Types only (422 at the
  service, as FastAPI answers it); its values by ``check_texts()``, each bad one with its own 400 code, at
  the gateway and at the service alike. ``check_images()`` is the image route's count check.
- ``EmbedForm``: the image route's form beside the images (``file``, repeated), as ``embed_images()`` sends it.
- ``EmbedResponse``: what the service answers: one L2-normalised vector per input, in input order, all in
  one space per model (a text and an image of one model compare by their dot product).
- ``modalities()`` and ``check_modality()``: which inputs a catalog model takes (option ``modalities``;
  a text-only tower answers 400 ``unsupported_input`` to images).
- ``space()``: which vectors compare: the catalog option ``space``, default the model's own id. A text-only
  tower trained into a CLIP's space (the multilingual one) names that CLIP's id, so its text queries search
  that CLIP's image vectors.
- ``dimensions()`` and ``truncated()``: OpenAI's ``dimensions``. A model whose catalog entry says
  ``matryoshka: true`` may be cut to a shorter prefix (re-normalised); any other answers 400 unless the
  asked size is its own.
- ``embed_texts()`` and ``embed_images()``: the upstream calls.

A text longer than the model's context (77 tokens for CLIP, 64 for SigLIP) is cut to it, as CLIP's own
tokenizer does; ``tokens`` counts what the model read.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

from pydantic import BaseModel, Field

from ..errors import BadRequest
from . import Requester, post_form, reply_as

FAMILY = "embed"
TEXT_PATH = "/v1/embed/text"
IMAGE_PATH = "/v1/embed/images"
MAX_TEXT_CHARS = 8192
MAX_ITEMS = 256
"""Most texts or images in one request, at the gateway and at the service."""
MODALITIES: tuple[str, ...] = ("text", "image")
Modality = Literal["text", "image"]


class TextRequest(BaseModel):
    """The text route's JSON body."""

    model: str = Field(description="Catalog id of an embed model.")
    texts: list[str] = Field(description=f"1 to {MAX_ITEMS} texts, each at most {MAX_TEXT_CHARS} characters.")


class EmbedForm(BaseModel):
    """The image route's form fields beside the images (``file``, repeated)."""

    model: str = Field(description="Catalog id of an embed model that takes images.")


def check_texts(texts: list[str]) -> None:
    """400 ``empty_input`` (no texts, or a blank one), ``too_many_inputs``, ``text_too_long``; ``param``
    names the first bad text (``texts.3``)."""
    if not texts:
        raise BadRequest("texts is empty: send 1 or more texts", param="texts", code="empty_input")
    check_count(len(texts), "texts")
    for i, text in enumerate(texts):
        if not text.strip():
            raise BadRequest(f"texts[{i}] is blank", param=f"texts.{i}", code="empty_input")
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequest(f"texts[{i}] has {len(text)} characters; the limit is {MAX_TEXT_CHARS}",
                             param=f"texts.{i}", code="text_too_long")


def check_images(count: int) -> None:
    """400 ``empty_input`` for no image, ``too_many_inputs`` past ``MAX_ITEMS``."""
    if count == 0:
        raise BadRequest("no image: send 1 or more as 'file'", param="file", code="empty_input")
    check_count(count, "file")


def check_count(count: int, param: str) -> None:
    if count > MAX_ITEMS:
        raise BadRequest(f"{count} inputs; the limit is {MAX_ITEMS} per request", param=param, code="too_many_inputs")


def modalities(options: Mapping[str, Any]) -> set[str]:
    """The inputs a model takes: its catalog option ``modalities`` (a list of "text", "image"), default both."""
    value = options.get("modalities")
    if value is None:
        return set(MODALITIES)
    chosen = {value} if isinstance(value, str) else set(value)
    unknown = chosen - set(MODALITIES)
    if unknown or not chosen:
        raise ValueError(f"modalities must be a non-empty list of {', '.join(MODALITIES)}; got {value!r}")
    return chosen


def check_modality(model: str, options: Mapping[str, Any], modality: Modality) -> None:
    """400 ``unsupported_input`` when ``model`` does not take ``modality`` (a text-only tower and an image)."""
    if modality not in modalities(options):
        taken = " and ".join(sorted(modalities(options)))
        raise BadRequest(f"model {model} embeds {taken} only, not {modality}s", param="model", code="unsupported_input")


def space(model: str, options: Mapping[str, Any]) -> str:
    """The space ``model``'s vectors live in: its catalog option ``space``, else its own id. Two models' vectors
    compare (dot product, search) only when their spaces are equal."""
    return str(options.get("space") or model)


def dimensions(model: str, options: Mapping[str, Any], dim: int, requested: int | None) -> int:
    """The vector size a request gets: ``dim`` (the model's), or ``requested`` where the model is
    Matryoshka-trained (catalog option ``matryoshka: true``) and 1 <= requested <= dim; else 400
    ``unsupported_dimensions``."""
    if requested is None or requested == dim:
        return dim
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise BadRequest("dimensions must be a positive integer", param="dimensions", code="unsupported_dimensions")
    if not options.get("matryoshka"):
        raise BadRequest(f"model {model} makes {dim}-dimensional vectors and cannot be cut to {requested}",
                         param="dimensions", code="unsupported_dimensions")
    if requested > dim:
        raise BadRequest(f"model {model} makes {dim}-dimensional vectors; dimensions must be at most {dim}",
                         param="dimensions", code="unsupported_dimensions")
    return requested


def truncated(vectors: list[list[float]], dims: int) -> list[list[float]]:
    """Each vector's first ``dims`` components, L2-normalised again (a Matryoshka model's shorter vector)."""
    out = []
    for v in vectors:
        head = v[:dims]
        norm = math.sqrt(sum(x * x for x in head)) or 1.0
        out.append([x / norm for x in head])
    return out


class EmbedTimings(BaseModel):
    decode_ms: float = Field(description="Time the embed service took to read and decode the inputs (0 for texts).")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class EmbedResponse(BaseModel):
    object: str = "embedding.list"
    model: str
    modality: Modality
    dim: int = Field(description="Length of every vector.")
    embeddings: list[list[float]] = Field(description="One L2-normalised vector per input, in input order.")
    tokens: int = Field(description="Text tokens the model read (each text cut to its context); 0 for images.")
    timings: EmbedTimings


async def embed_texts(upstream: Requester, model: str, texts: list[str], *, timeout_s: float,
                      request_id: str | None = None) -> EmbedResponse:
    """The embeddings of ``texts``; the service's errors as the ``Upstream`` maps them, an answer that does
    not fit ``EmbedResponse`` as 502."""
    answer = await upstream.request("POST", TEXT_PATH, json_body={"model": model, "texts": texts},
                                    timeout_s=timeout_s, request_id=request_id)
    return reply_as(EmbedResponse, answer, "embed-svc")


async def embed_images(upstream: Requester, model: str, images: list[bytes], *, timeout_s: float,
                       request_id: str | None = None) -> EmbedResponse:
    """The embeddings of ``images`` (bytes of any format the service decodes), in order."""
    files = [("file", f"image{i}", image) for i, image in enumerate(images)]
    return await post_form(upstream, IMAGE_PATH, EmbedForm(model=model), files, EmbedResponse, service="embed-svc",
                           timeout_s=timeout_s, request_id=request_id)
