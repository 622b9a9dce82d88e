"""GET /admin/events: the gateway's one live stream (model states, swaps, job progress) as server-sent
events, and GET /admin/swaps: the recent swap decisions. The hub and its sources: gateway/events*.py."""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from modelhost.errors import error_responses

from ..events import EVENT_ADAPTER, EventHub, SwapEvent, sse

router = APIRouter(tags=["admin"])

HEARTBEAT_S = 15.0


def hub_of(request: Request) -> EventHub:
    return request.app.state.events


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` put in place of their references (one event's schema, standalone)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items() if k != "discriminator"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(schema)


EVENT_SCHEMA = _inline(EVENT_ADAPTER.json_schema())


async def _stream(hub: EventHub, heartbeat_s: float) -> AsyncIterator[bytes]:
    sub = hub.subscribe()
    try:
        yield b"retry: 2000\n\n"
        while True:
            event = await sub.next(heartbeat_s)
            if event is None:  # dropped: it fell behind; the client reconnects and reads the views again
                return
            yield sse(event)
    finally:
        hub.unsubscribe(sub)


@router.get("/admin/events", response_class=StreamingResponse, summary="Live events: model states, swaps, job progress",
            description="Server-sent events, each `event:` line naming its type and its `data:` the JSON of one of: "
                        "`model` (a model's ledger state changed), `swap` (a swap started, was done or failed: what was "
                        "evicted for what, release and load times), `job` (a job's progress changed; at most five reads "
                        "a second), `heartbeat` (after 15 s of quiet). `id:` is the event's `seq`: a gap means events "
                        "were missed. A client that falls 256 events behind is dropped (the stream ends); it reconnects "
                        "and reads GET /admin/models, /admin/gpu, /admin/swaps and /v1/jobs again.",
            responses={200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA}}}, **error_responses(401)})
async def events(request: Request) -> StreamingResponse:
    return StreamingResponse(_stream(hub_of(request), HEARTBEAT_S), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class SwapList(BaseModel):
    object: str = "list"
    data: list[SwapEvent]


@router.get("/admin/swaps", response_model=SwapList, summary="The recent swap decisions, newest first",
            description="The last 50 swaps that were done or failed since the gateway started: the model swapped in, "
                        "what was evicted for it (with each release's time), and the load's time.",
            responses=error_responses(401))
async def swaps(request: Request) -> SwapList:
    return SwapList(data=list(reversed(hub_of(request).swaps)))
