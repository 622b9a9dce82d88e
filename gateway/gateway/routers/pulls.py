"""The admin routes of model weights: pull (with progress, polled or streamed), its status, and the cache
delete. The logic is ``gateway.pulls``."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from modelhost.contract import CacheDeleted, PullStatus
from modelhost.errors import error_responses, request_id_of

from ..pulls import Pulls

router = APIRouter()

_SSE_DOC = {"text/event-stream": {"schema": {"type": "string", "description":
            "`event: progress` with a PullStatus at each change, then one `event: end` (state done or failed)."}}}


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
