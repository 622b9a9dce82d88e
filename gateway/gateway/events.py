"""The gateway's one live events stream (``GET /admin/events``): typed events, fanned out to bounded
per-subscriber queues.

Who publishes: the coordinator's observer (``events_sources.CoordinatorObserver``: model state
changes and swaps, from the Core's actions, on the event loop thread) and the jobs' progress reader
(``events_sources.JobProgress``: one reader for every subscriber, at most five reads a second, the
store on its own thread). Who reads: the console (``/ui``) and ``roundhouse models --watch``.

Invariants:

1. ``publish`` is fan-out only: one ``put_nowait`` per subscriber, no I/O, no await, nothing that
   grows with the number of events. It is called on the event loop thread.
2. Memory is bounded: each subscriber's queue holds at most ``queue_size`` events, and the recent
   swaps at most ``history``. A subscriber whose queue is full (a slow client) is dropped: its queue
   is closed, its stream ends, and it may reconnect and read the views again. Nobody waits for it.
   The metrics show both: ``roundhouse_gateway_events_subscribers`` (now) and
   ``roundhouse_gateway_events_subscribers_dropped_total``.
3. Every event has a ``type`` and a ``seq`` (counting from 1 per gateway process), so a client can
   tell it missed some (a gap) and read the views again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

if TYPE_CHECKING:
    from .metrics import GatewayMetrics


class _Event(BaseModel):
    seq: int = Field(0, description="Counts the events of this gateway process from 1; a gap means some were missed.")
    at: float = Field(default_factory=time.time, description="Unix time of the event, in seconds.")


class ModelStateEvent(_Event):
    type: Literal["model"] = "model"
    model: str
    device: str = Field(description="The device ledger the model is charged to.")
    state: str = Field(description="Its ledger state now: unloaded, loading, ready, draining or unloading.")
    previous: str = Field(description="Its ledger state before.")
    reason: str | None = Field(None, description="Why it is unloading: swap, request, over_budget, reconcile, foreign.")


class EvictedModel(BaseModel):
    model: str
    reason: str = Field(description="swap, request, over_budget, reconcile or foreign.")
    release_s: float | None = Field(None, description="From the unload's start to its release (None: still going).")


class SwapEvent(_Event):
    type: Literal["swap"] = "swap"
    device: str
    load: str = Field(description="The model swapped in.")
    evicted: list[EvictedModel] = Field(description="What was evicted to make room for it (empty: nothing had to go).")
    phase: Literal["started", "done", "failed"] = Field(
        description="started: the load was sent; done: it is ready; failed: its load failed.")
    load_s: float | None = Field(None, description="From the load's start until the model was ready (phase done).")
    started_at: float = Field(description="Unix time the swap was decided.")


class JobEvent(_Event):
    type: Literal["job"] = "job"
    job: str
    task: str
    model: str
    state: str
    progress: float = Field(description="Finished items over all items, 0 to 1.")
    counts: dict[str, int] = Field(description="total, pending, done, error, cancelled, deduplicated (as GET /v1/jobs/{id}).")
    rate_per_s: float | None = None
    eta_s: float | None = None


class HeartbeatEvent(_Event):
    """Sent after ``heartbeat_s`` of quiet so that proxies keep the stream open; its ``seq`` is 0 (not counted)."""

    type: Literal["heartbeat"] = "heartbeat"


Event = Annotated[Union[ModelStateEvent, SwapEvent, JobEvent, HeartbeatEvent], Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)


class Subscriber:
    """One client's bounded queue. ``dropped`` is set when it fell behind (its queue was full)."""

    def __init__(self, queue_size: int) -> None:
        self.queue: asyncio.Queue[_Event | None] = asyncio.Queue(maxsize=queue_size)
        self.dropped = False

    async def next(self, timeout_s: float) -> _Event | None:
        """The next event; a heartbeat after ``timeout_s`` of quiet; None once dropped."""
        if self.dropped:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                return await self.queue.get()
        except asyncio.TimeoutError:
            return None if self.dropped else HeartbeatEvent()


class EventHub:
    """Fan-out of events to subscribers (see the module's docstring)."""

    def __init__(self, *, queue_size: int = 256, history: int = 50, metrics: GatewayMetrics | None = None) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.swaps: collections.deque[SwapEvent] = collections.deque(maxlen=history)
        self.dropped_total = 0
        self._seq = itertools.count(1)
        self._dropped = metrics.events_dropped if metrics is not None else None
        if metrics is not None:  # read at each scrape: it cannot drift from the set, whatever removed a subscriber
            metrics.events_subscribers.set_function(lambda: len(self.subscribers))

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.queue_size)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, event: _Event) -> None:
        event.seq = next(self._seq)
        if isinstance(event, SwapEvent) and event.phase != "started":
            self.swaps.append(event)
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                # A slow client: drop it rather than let its queue grow. Its stream sees ``dropped`` and
                # ends; the None wakes it if it waits (room for it: one event is taken out).
                sub.dropped = True
                self.subscribers.discard(sub)
                self.dropped_total += 1
                if self._dropped is not None:
                    self._dropped.inc()
                sub.queue.get_nowait()
                sub.queue.put_nowait(None)


def sse(event: _Event) -> bytes:
    """One server-sent event: its ``event:`` line is the type, its ``data:`` the JSON of the model."""
    return f"event: {event.type}\nid: {event.seq}\ndata: {event.model_dump_json()}\n\n".encode()  # type: ignore[attr-defined]
