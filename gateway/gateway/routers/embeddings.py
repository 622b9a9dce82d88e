"""POST /v1/embeddings, OpenAI's shape, for two kinds of model:

- an embed model of the catalog (``modelhost.families.embed``: CLIP, SigLIP): served here. ``input`` is a
  text, a list of texts, or a list whose items may also be ``{"image": base64 or data URL}`` (one space:
  a text and an image compare by their dot product); or a multipart form with ``file`` images (repeat it)
  and ``model``. ``encoding_format`` float, or base64 (little-endian float32, as OpenAI's); ``dimensions``
  where the model allows (``embed.dimensions``). The model is held through the coordinator for both
  calls (texts, then images) and the vectors are put back in input order.
- an llm model (an Ollama or llama-swap tenant): the JSON body goes to its server as it came
  (``routers.openai.forward``).

Everything is checked before the model is asked for: the body, the fields, the model (404 for any other
family), each text (blank, too long), each image's header, and the modality (400 ``unsupported_input``:
an image for a text-only model).
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from modelhost.catalog import TENANT_FAMILY
from modelhost.errors import BadRequest, ModelNotFound, UnsupportedMediaType, error_responses, request_id_of
from modelhost.families import embed, validated

from ..bodies import FORM_OVERHEAD_BYTES, decode_base64_field, json_request_body, parse_json_object, read_body, read_upload
from ..images import check_image
from ..state import gw
from .openai import EmbeddingRequest, forward

router = APIRouter(tags=["embeddings"])


class ImageItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: StrictStr = Field(min_length=1, description="An image, base64 or a data: URL (embed models).")


Tokens = list[StrictInt]


class EmbeddingsJSON(BaseModel):
    """OpenAI's embeddings request; image items for embed models."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: StrictStr = Field(min_length=1, description="An embed model, or an llm model of a tenant server.")
    input: StrictStr | list[StrictStr | ImageItem] | Tokens | list[Tokens] = Field(
        description=f"A text, or a list of texts and {{\"image\": ...}} items (at most {embed.MAX_ITEMS}); token "
                    "arrays for llm models only.")
    encoding_format: Literal["float", "base64"] = Field("float", description="base64: little-endian float32, as OpenAI's.")
    dimensions: StrictInt | None = Field(None, ge=1, description="A shorter vector, where the model allows (Matryoshka).")
    user: StrictStr | None = Field(None, description="Accepted and ignored, as OpenAI's.")


class EmbeddingsForm(BaseModel):
    """The multipart form: images as ``file`` (repeat it), for embed models that take images."""

    model: str = Field(min_length=1, description="An embed model that takes images.")
    file: list[bytes] = Field(description=f"An image (repeat the field; at most {embed.MAX_ITEMS}).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The vector, or base64 of its little-endian float32 values.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


_BODY = json_request_body(EmbeddingsJSON)
_BODY["requestBody"]["content"]["multipart/form-data"] = {"schema": EmbeddingsForm.model_json_schema()}


@router.post("/v1/embeddings", response_model=EmbeddingList, summary="Embeddings of texts and images (OpenAI-compatible)",
             description="An embed model (CLIP, SigLIP) answers here, texts and images in one space; an llm model's "
                         "request goes to its server (Ollama, llama-swap) as it came. 404 model_not_found for any other.",
             responses=error_responses(400, 401, 404, 413, 415, 429, 502, 503, 504), openapi_extra=_BODY)
async def embeddings(request: Request) -> Any:
    g = gw(request)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        upload = await read_upload(request, images={"file": "file"}, fields=("model", "encoding_format", "dimensions"),
                                   max_image_bytes=g.settings.max_upload_bytes, many="file", max_many=embed.MAX_ITEMS)
        form = validated(EmbeddingsForm, {**upload.fields, "file": []})
        inputs: list[str | bytes] = [p.data for p in upload.parts()]
        params = [p.param for p in upload.parts()]
        return await _embed(request, form.model, inputs, params, form.encoding_format, form.dimensions)
    if ctype != "application/json":
        raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {ctype or 'no Content-Type'}",
                         code="unsupported_content_type")
    body = parse_json_object(await read_body(request, g.settings.max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES))
    model = body.get("model")
    spec = g.catalog.get(model) if isinstance(model, str) else None
    if spec is not None and spec.family == TENANT_FAMILY:
        return await forward(request, "/v1/embeddings", EmbeddingRequest, body)
    if spec is not None and spec.family != embed.FAMILY:
        raise ModelNotFound(f"model {model!r} makes no embeddings (it is a {spec.family} model)", param="model")
    req = validated(EmbeddingsJSON, body)
    g.access.spec(req.model)  # 404 for an id not in the catalog
    items = [req.input] if isinstance(req.input, str) else req.input
    inputs, params = [], []
    for i, item in enumerate(items):
        if isinstance(item, ImageItem):
            inputs.append(decode_base64_field(item.image, f"input.{i}.image"))
            params.append(f"input.{i}.image")
        elif isinstance(item, str):
            inputs.append(item)
            params.append(f"input.{i}")
        else:
            raise BadRequest(f"model {req.model} takes texts and images, not token arrays", param="input",
                             code="unsupported_input")
    return await _embed(request, req.model, inputs, params, req.encoding_format, req.dimensions)


async def _embed(request: Request, model: str, inputs: list[str | bytes], params: list[str], encoding: str,
                 dimensions: int | None) -> EmbeddingList:
    g = gw(request)
    spec = g.access.spec(model, embed.FAMILY)  # 404
    options = spec.options or {}
    if not inputs:
        raise BadRequest("input is empty: send 1 or more texts or images", param="input", code="empty_input")
    embed.check_count(len(inputs), "input")
    texts = [(i, x) for i, x in enumerate(inputs) if isinstance(x, str)]
    images = [(i, x) for i, x in enumerate(inputs) if isinstance(x, bytes)]
    if texts:
        embed.check_modality(model, options, "text")
        try:
            embed.check_texts([t for _, t in texts])
        except BadRequest as e:  # name the input, not the service's list
            j = int((e.param or "texts.0").rsplit(".", 1)[-1])
            e.param = params[texts[j][0]]
            raise
    if images:
        embed.check_modality(model, options, "image")
        for i, data in images:
            check_image(data, max_bytes=g.settings.max_upload_bytes, max_pixels=g.settings.max_image_pixels, param=params[i])
    if dimensions is not None and "dim" in options:
        embed.dimensions(model, options, int(options["dim"]), dimensions)  # 400 before any work when the size is known
    vectors: list[list[float]] = [[] for _ in inputs]
    tokens = 0
    rid, timeout_s = request_id_of(request), g.settings.request_timeout_s
    async with g.access.hold(model, embed.FAMILY) as upstream:
        for group, call in ((texts, embed.embed_texts), (images, embed.embed_images)):
            if not group:
                continue
            reply = await call(upstream, model, [x for _, x in group], timeout_s=timeout_s, request_id=rid)
            size = embed.dimensions(model, options, reply.dim, dimensions)
            got = reply.embeddings if size == reply.dim else embed.truncated(reply.embeddings, size)
            for (i, _), v in zip(group, got):
                vectors[i] = v
            tokens += reply.tokens
    data = [Embedding(index=i, embedding=_encoded(v, encoding)) for i, v in enumerate(vectors)]
    return EmbeddingList(data=data, model=model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
