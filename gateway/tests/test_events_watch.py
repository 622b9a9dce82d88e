"""``roundhouse jobs list --watch``: the events stream's frames parsed and printed a line each."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from gateway.events import EvictedModel, HeartbeatEvent, JobEvent, ModelStateEvent, SwapEvent, sse
from gateway.events_watch import format_event, sse_events

pytestmark = pytest.mark.unit


async def lines_of(*frames: bytes) -> AsyncIterator[bytes]:
    for frame in frames:
        for line in frame.splitlines(keepends=True):
            yield line


async def test_the_frames_the_gateway_sends_are_parsed_back_and_printed() -> None:
    events = [
        ModelStateEvent(model="tiny-blip", device="cpu", state="unloading", previous="ready", reason="swap"),
        SwapEvent(device="cpu", load="tiny-blip2", evicted=[EvictedModel(model="tiny-blip", reason="swap", release_s=0.25)],
                  phase="done", load_s=0.5, started_at=0.0),
        HeartbeatEvent(),
        JobEvent(job="job-1", task="caption", model="tiny-blip", state="running", progress=0.25,
                 counts={"total": 40, "pending": 30, "done": 10, "error": 0, "cancelled": 0, "deduplicated": 0},
                 rate_per_s=4.0, eta_s=7.5),
    ]
    got = [(k, d) async for k, d in sse_events(lines_of(b"retry: 2000\n\n", *(sse(e) for e in events)))]
    assert [k for k, _ in got] == ["model", "swap", "heartbeat", "job"]
    printed = [format_event(k, d) for k, d in got]
    assert "tiny-blip" in printed[0] and "ready -> unloading (swap)" in printed[0]
    assert "tiny-blip2" in printed[1] and "evicted: tiny-blip (swap, released in 0.25 s)" in printed[1]
    assert printed[1].endswith("load 0.50 s")
    assert printed[2] is None  # heartbeats print nothing
    assert "10/40 (25%) 4.00/s ETA 8 s" in printed[3]


def test_an_unknown_kind_prints_nothing() -> None:
    assert format_event("something-new", {"at": 0}) is None
