"""The OpenAI routes of external tenants, proxied under a lease: ``POST /v1/chat/completions``,
``POST /v1/completions`` and, through ``routers.embeddings`` (which serves the embed family's models itself),
``POST /v1/embeddings`` for a model of the llm family (``gateway.tenants``).

The request is checked here first (its Content-Type, 415 unless application/json; the body's size, 413;
JSON, 400 ``invalid_json``; its fields' types,
400 naming the field; the model, 404 ``model_not_found`` for an id that is not an llm model of the
catalog), then the model is held through the coordinator (which loads it at its server, evicting what it
must, or queues the request), and the body is sent to the server's own OpenAI-compatible route (Ollama and
llama-swap both serve ``/v1/...``) with ``model`` rewritten to the server's name for it (the catalog's
``source``); every other field goes as it came. The answer is relayed as the server sent it, its
``model`` included. The coordinator so knows when the LLM is busy: a face request waits for a chat
request's end instead of meeting it on the device.

Streaming (``"stream": true``): the server's SSE chunks are relayed as they arrive, and the model is held
until the last byte is relayed: the hold and the upstream response are entered on an exit stack here, so
an error before the first byte is answered as any other route's (the server's 4xx keeps its status, in
the envelope), and the stack is closed when the response ends, however it ends.
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from modelhost.catalog import TENANT_FAMILY
from modelhost.client import read_all
from modelhost.errors import error_responses, request_id_of
from modelhost.families import validated

from ..bodies import json_request_body, read_json_object
from ..relay import RelayResponse
from ..state import gw

router = APIRouter(tags=["llm"])


class _LlmRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1, description="An llm model of the catalog (GET /v1/models lists them); "
                                                       "its server's name for it is sent on.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr = Field(min_length=1, description="system, user, assistant, tool, ...")
    content: StrictStr | list[dict[str, Any]] | None = Field(
        None, description="Text, or content parts (text and image_url parts for a vision model).")


class ChatCompletionRequest(_LlmRequest):
    """OpenAI's chat completion request; fields not named here are sent on as they came."""

    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = Field(False, description="Relay the answer as server-sent events, chunk by chunk.")


Tokens = list[StrictInt]


class CompletionRequest(_LlmRequest):
    """OpenAI's (legacy) completion request; fields not named here are sent on as they came."""

    prompt: StrictStr | list[StrictStr] | Tokens | list[Tokens]
    stream: StrictBool = Field(False, description="Relay the answer as server-sent events, chunk by chunk.")


class EmbeddingRequest(_LlmRequest):
    """OpenAI's embeddings request; fields not named here are sent on as they came."""

    input: StrictStr | list[StrictStr] | Tokens | list[Tokens]


_ANSWER = {200: {"description": "The server's answer, relayed: JSON, or server-sent events when `stream` is true.",
                 "content": {"application/json": {}, "text/event-stream": {}}},
           **error_responses(400, 401, 404, 413, 415, 429, 502, 503, 504)}
_DESCRIPTION = ("For an llm model of the catalog (an Ollama, llama-swap or HTTP server's model): held through the "
                "swap coordinator, then forwarded to its server with `model` rewritten to the server's name for it. "
                "404 model_not_found for any other model id.")


@router.post("/v1/chat/completions", summary="Chat completion from an LLM server's model (OpenAI-compatible)",
             description=_DESCRIPTION, response_class=Response, responses=_ANSWER,
             openapi_extra=json_request_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "/v1/chat/completions", ChatCompletionRequest)


@router.post("/v1/completions", summary="Text completion from an LLM server's model (OpenAI-compatible)",
             description=_DESCRIPTION, response_class=Response, responses=_ANSWER,
             openapi_extra=json_request_body(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _proxy(request, "/v1/completions", CompletionRequest)


async def _proxy(request: Request, path: str, schema: type[_LlmRequest]) -> Response:
    return await forward(request, path, schema, await read_json_object(request, gw(request).settings.max_upload_bytes))


async def forward(request: Request, path: str, schema: type[_LlmRequest], body: dict[str, Any]) -> Response:
    """``body`` (read already) to the llm model's server under a hold, answered as the module says."""
    g = gw(request)
    req = validated(schema, body)
    spec = g.access.spec(req.model, TENANT_FAMILY)  # 404 before any work
    body["model"] = spec.source
    streaming = body.get("stream") is True
    rid = request_id_of(request)
    timeout_s = g.settings.request_timeout_s
    async with contextlib.AsyncExitStack() as stack:  # an error in here releases what was entered, and is answered
        upstream = await stack.enter_async_context(g.access.hold(spec.id, TENANT_FAMILY))
        resp = await stack.enter_async_context(
            upstream.stream("POST", path, first_byte_timeout_s=timeout_s, request_id=rid, json_body=body))
        media_type = resp.headers.get("Content-Type", "text/event-stream" if streaming else "application/json")
        if not streaming:
            return Response(await read_all(resp, upstream.client.name, upstream.client.name, timeout_s), status_code=resp.status,
                            media_type=media_type)
        held = stack.pop_all()  # from here on the response closes it
    return RelayResponse(resp.content.iter_any(), held, status_code=resp.status, media_type=media_type,
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
