"""The gateway's events stream: the hub's fan-out and its bound on a slow client, the coordinator's
observer on the real Core (model states, swaps with what was evicted and the times), the jobs'
progress reader, and the SSE framing of GET /admin/events."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.coordinator.core import Core, Load, Released, Unload
from gateway.coordinator.policy import INTERACTIVE, ModelInfo, PolicyConfig
from gateway.events import EVENT_ADAPTER, EventHub, HeartbeatEvent, JobEvent, ModelStateEvent, SwapEvent, sse
from gateway.events_sources import CoordinatorObserver, JobProgress
from gateway.metrics import GatewayMetrics
from gateway.routers.events import EVENT_SCHEMA, _stream
from gateway.config import CoordinatorSettings, GatewaySettings
from gateway.main import create_app

pytestmark = pytest.mark.unit

GiB = 2**30


def model_event(model: str = "A", state: str = "ready") -> ModelStateEvent:
    return ModelStateEvent(model=model, device="cpu", state=state, previous="loading")


async def test_every_subscriber_gets_every_event_in_order_with_a_sequence() -> None:
    hub = EventHub()
    a, b = hub.subscribe(), hub.subscribe()
    for m in ("A", "B", "C"):
        hub.publish(model_event(m))
    for sub in (a, b):
        got = [await sub.next(1.0) for _ in range(3)]
        assert [e.model for e in got] == ["A", "B", "C"]
        assert [e.seq for e in got] == [1, 2, 3]


async def test_a_slow_subscriber_is_dropped_and_its_queue_stays_bounded() -> None:
    hub = EventHub(queue_size=4)
    slow, fast = hub.subscribe(), hub.subscribe()
    for i in range(10):
        hub.publish(model_event(f"M{i}"))
        assert (await fast.next(1.0)).model == f"M{i}"  # the fast one keeps up
    assert slow.dropped and slow not in hub.subscribers
    assert slow.queue.qsize() <= 4
    assert hub.dropped_total == 1
    assert fast in hub.subscribers and not fast.dropped
    assert await slow.next(1.0) is None  # its stream ends


async def test_the_metrics_count_subscribers_now_and_those_dropped_for_falling_behind() -> None:
    metrics = GatewayMetrics()
    hub = EventHub(queue_size=2, metrics=metrics)

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert sample("roundhouse_gateway_events_subscribers") == 0
    assert sample("roundhouse_gateway_events_subscribers_dropped_total") == 0
    slow, fast = hub.subscribe(), hub.subscribe()
    assert sample("roundhouse_gateway_events_subscribers") == 2
    for i in range(4):
        hub.publish(model_event(f"M{i}"))
        await fast.next(1.0)
    assert slow.dropped
    assert sample("roundhouse_gateway_events_subscribers") == 1
    assert sample("roundhouse_gateway_events_subscribers_dropped_total") == 1
    hub.unsubscribe(fast)  # a client that hangs up is no drop
    assert sample("roundhouse_gateway_events_subscribers") == 0
    assert sample("roundhouse_gateway_events_subscribers_dropped_total") == 1


@pytest.mark.app
async def test_the_gateways_metrics_show_the_events_streams_subscribers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: the import fails, the GPU collector shows nothing
    (tmp_path / "catalog.yaml").write_text("models:\n  - {id: cap-a, family: caption, backend: blip, source: ./none, "
                                           "device: cpu, memory_estimate_mb: 64}\n")
    app = create_app(GatewaySettings(catalog=tmp_path / "catalog.yaml", services={}),
                     CoordinatorSettings(data_dir=tmp_path / "data", reconcile_interval_s=None))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            app.state.events.subscribe()
            text = (await c.get("/metrics")).text
    m = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert m["roundhouse_gateway_events_subscribers"] == 1
    assert m["roundhouse_gateway_events_subscribers_dropped_total"] == 0


async def test_a_quiet_stream_gets_heartbeats() -> None:
    sub = EventHub().subscribe()
    assert isinstance(await sub.next(0.01), HeartbeatEvent)


async def test_the_recent_swaps_are_bounded_and_exclude_the_started_phase() -> None:
    hub = EventHub(history=3)
    for i in range(5):
        hub.publish(SwapEvent(device="cpu", load=f"M{i}", evicted=[], phase="started", started_at=0.0))
        hub.publish(SwapEvent(device="cpu", load=f"M{i}", evicted=[], phase="done", load_s=0.1, started_at=0.0))
    assert [s.load for s in hub.swaps] == ["M2", "M3", "M4"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_observer_publishes_state_changes_and_a_swap_with_its_victim_and_times() -> None:
    clock = Clock()
    hub = EventHub()
    sub = hub.subscribe()
    core = Core("cpu", 5 * GiB, {"A": ModelInfo("A", 4 * GiB), "B": ModelInfo("B", 4 * GiB)}, config=PolicyConfig())
    observe = CoordinatorObserver(hub, clock).seeded({"cpu": core})

    def step(actions: list) -> list:
        observe("cpu", core, actions)
        return actions

    assert Load("A") in step(core.arrive(1, "A", clock.now, lane=INTERACTIVE))
    clock.now += 0.5
    step(core.load_done("A", clock.now, ok=True, peak_memory_bytes=4 * GiB))
    step(core.release("A", clock.now))
    clock.now += 1
    acts = step(core.arrive(2, "B", clock.now, lane=INTERACTIVE))  # B needs A out: a swap
    assert any(isinstance(a, Unload) and a.model == "A" for a in acts)
    clock.now += 0.25
    assert Load("B") in step(core.unload_done("A", clock.now, Released(4 * GiB, True, 0.25, "test")))
    clock.now += 0.75
    step(core.load_done("B", clock.now, ok=True, peak_memory_bytes=4 * GiB))

    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    states = [(e.model, e.previous, e.state) for e in events if isinstance(e, ModelStateEvent)]
    assert states == [("A", "unloaded", "loading"), ("A", "loading", "ready"), ("A", "ready", "unloading"),
                      ("A", "unloading", "unloaded"), ("B", "unloaded", "loading"), ("B", "loading", "ready")]
    unloading = next(e for e in events if isinstance(e, ModelStateEvent) and e.state == "unloading")
    assert unloading.reason == "swap"
    swaps = [e for e in events if isinstance(e, SwapEvent)]
    assert [(s.load, s.phase) for s in swaps] == [("A", "started"), ("A", "done"), ("B", "started"), ("B", "done")]
    assert swaps[1].evicted == [] and swaps[1].load_s == 0.5
    done = swaps[3]
    assert [(v.model, v.reason, v.release_s) for v in done.evicted] == [("A", "swap", 0.25)]
    assert done.load_s == 0.75
    assert [s.load for s in hub.swaps] == ["A", "B"]


async def test_the_observer_seeded_from_the_ledger_invents_no_change() -> None:
    hub = EventHub()
    core = Core("cpu", 5 * GiB, {"A": ModelInfo("A", 1 * GiB)})
    core.arrive(1, "A", 0.0)
    core.load_done("A", 1.0, ok=True, peak_memory_bytes=GiB)
    sub = hub.subscribe()
    observe = CoordinatorObserver(hub).seeded({"cpu": core})
    observe("cpu", core, core.release("A", 2.0))
    assert sub.queue.empty()


async def test_job_progress_reads_each_changed_job_once_for_all_subscribers() -> None:
    hub = EventHub()
    subs = [hub.subscribe(), hub.subscribe()]
    reads: list[str] = []

    async def status(job_id: str) -> dict:
        reads.append(job_id)
        return {"id": job_id, "task": "captions", "model": "tiny-blip", "state": "running", "progress": 0.5,
                "counts": {"total": 2, "pending": 1, "done": 1, "error": 0, "cancelled": 0, "deduplicated": 0},
                "rate_per_s": 2.0, "eta_s": 0.5}

    progress = JobProgress(hub, status, interval_s=0.01)
    progress.start()
    try:
        for _ in range(5):
            progress.notify("job-1")  # five changes before the reader runs: one read
        events = [await asyncio.wait_for(s.queue.get(), 5) for s in subs]
    finally:
        await progress.close()
    assert reads == ["job-1"]
    for e in events:
        assert isinstance(e, JobEvent) and e.job == "job-1" and e.progress == 0.5 and e.eta_s == 0.5


async def test_the_stream_frames_typed_events_and_ends_when_its_client_is_dropped() -> None:
    hub = EventHub(queue_size=2)
    stream = _stream(hub, heartbeat_s=10.0)
    assert await stream.__anext__() == b"retry: 2000\n\n"  # subscribed from here on
    hub.publish(model_event("A"))
    frame = (await stream.__anext__()).decode()
    lines = frame.strip().split("\n")
    assert lines[0] == "event: model" and lines[1] == "id: 1"
    event = EVENT_ADAPTER.validate_python(json.loads(lines[2].removeprefix("data: ")))
    assert isinstance(event, ModelStateEvent) and event.model == "A"
    for i in range(5):  # it reads nothing meanwhile: dropped
        hub.publish(model_event(f"M{i}"))
    rest = [chunk async for chunk in stream]
    assert len(rest) <= 2 and not hub.subscribers


def test_the_documented_schema_names_every_event_type() -> None:
    types = {option["properties"]["type"]["const"] for option in EVENT_SCHEMA["oneOf"]}
    assert types == {"model", "swap", "job", "heartbeat"}
    assert "$defs" not in json.dumps(EVENT_SCHEMA)
    assert sse(model_event()).startswith(b"event: model\n")


async def test_an_operator_unload_of_a_busy_model_shows_draining_then_unloading_and_grants_scan_nothing() -> None:
    hub = EventHub()
    core = Core("cpu", 5 * GiB, {"A": ModelInfo("A", 1 * GiB), "B": ModelInfo("B", 1 * GiB)})
    core.arrive(1, "A", 0.0)
    core.load_done("A", 1.0, ok=True, peak_memory_bytes=GiB)  # A resident, request 1 in flight
    observe = CoordinatorObserver(hub).seeded({"cpu": core})
    sub = hub.subscribe()
    observe("cpu", core, core.arrive(2, "A", 1.5))  # a grant: nothing changes, nothing published
    assert sub.queue.empty()
    observe("cpu", core, core.request_unload(7, "A", 2.0, drain=True))
    observe("cpu", core, core.release("A", 2.5))
    observe("cpu", core, core.release("A", 3.0))
    got = [(e.previous, e.state, e.reason) for e in (sub.queue.get_nowait() for _ in range(sub.queue.qsize()))]
    assert got == [("ready", "draining", None), ("draining", "unloading", "request")]


async def test_a_failing_observer_never_breaks_the_coordinator(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(EventHub):
        def publish(self, event) -> None:  # noqa: ANN001
            raise RuntimeError("a subscriber's bug")

    core = Core("cpu", 5 * GiB, {"A": ModelInfo("A", 1 * GiB)})
    observe = CoordinatorObserver(Broken()).seeded({"cpu": core})
    observe("cpu", core, core.arrive(1, "A", 0.0))  # A starts loading: a change to publish, which raises
    assert "observer failed" in caplog.text
