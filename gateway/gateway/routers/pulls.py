"""The admin routes of model weights: pull (with progress, polled or streamed), its status, and the cache
delete. The logic is ``gateway.pulls``."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from modelhost.contract import CacheDeleted, PullStatus
from modelhost.errors import error_responses, request_id_of
from pydantic import BaseModel, Json

from ..pulls import Pulls

router = APIRouter()

class PullError(BaseModel):
    code: str
    message: str


class PullEvent(BaseModel):
    """One server-sent event of a streamed pull: ``progress`` with its status at each change, then one ``end``
    (state done or failed), or ``error`` when the gateway lost the pull."""

    event: Literal["progress", "end", "error"]
    data: Json[PullStatus | PullError]


def _event_schema() -> dict:
    """Open API 3.1: a ``text/event-stream`` ``schema`` describes one event; ``PullStatus`` is the document's own
    component (this route answers it as JSON)."""
    schema = PullEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    error = schema.pop("$defs")["PullError"]  # not a component of the document: inlined
    choices = schema["properties"]["data"]["contentSchema"]["anyOf"]
    choices[:] = [error if c.get("$ref", "").endswith("/PullError") else c for c in choices]
    return schema


_SSE_DOC = {"text/event-stream": {"schema": _event_schema()}}


def pulls(request: Request) -> Pulls:
    return request.app.state.pulls


@router.post("/admin/models/{model_id}/pull", response_model=PullStatus, tags=["admin"],
             summary="Fetch a model's weights into its service's cache, outside any swap (like `ollama pull`)",
             description="Starts the pull (or joins the one running) and answers its status at once; poll `GET` on the "
                         "same path for its progress (bytes, total, rate, ETA). With `?stream=true` or `Accept: "
                         "text/event-stream` the answer is server-sent events until the pull has ended. A local source "
                         "is verified in place; weights a backend fetches itself on its first load are 409 "
                         "`pull_unsupported`. Offline, the pull fails within seconds with the reason.",
             responses={200: {"content": _SSE_DOC}, **error_responses(401, 404, 409, 502, 503, 504)})
async def pull(model_id: str, request: Request,
               stream: bool = Query(False, description="Answer server-sent progress events until the pull ends.")):  # noqa: ANN201
    p = pulls(request)
    first = await p.start(model_id, request_id=request_id_of(request))  # every error before the stream starts
    if stream or "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(p.events(model_id, first), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return first


@router.get("/admin/models/{model_id}/pull", response_model=PullStatus, tags=["admin"],
            summary="A model's pull: its progress, and whether its weights are cached",
            responses=error_responses(401, 404, 409, 502, 503, 504))
async def pull_status(model_id: str, request: Request) -> PullStatus:
    return await pulls(request).status(model_id)


@router.delete("/admin/models/{model_id}/cache", response_model=CacheDeleted, tags=["admin"],
               summary="Delete a model's downloaded weights (409 model_loaded while it is loaded)",
               description="Only what was downloaded into the cache is deleted: a local source, or weights shipped in "
                           "a package, are 409 `cache_not_ours`. The model's next load pulls its weights again.",
               responses=error_responses(401, 404, 409, 502, 503, 504))
async def delete_cache(model_id: str, request: Request) -> CacheDeleted:
    return await pulls(request).delete(model_id, request_id=request_id_of(request))
