"""The pull gate (``gateway.pulls``) in front of the real coordinator: a model whose weights are downloading
does not hold the swap slot, so another model swaps in and serves meanwhile; the download's model then loads;
a failed pull is 502 with the reason and a request that outlasts its pull is 503 with the progress.

The family service is a stand-in HTTP server on loopback (the real ``ModelHostClient`` talks to it) whose pull
of ``cap-a`` ends only when the test says so. The coordinator runs for real with effects that load at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from gateway.access import ModelAccess
from gateway.coordinator.effects import Loaded, Released
from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.loop import Coordinator
from gateway.coordinator.policy import PolicyConfig
from gateway.metrics import GatewayMetrics
from gateway.pulls import Pulls
from modelhost.catalog import Catalog, ModelSpec
from modelhost.client import ModelHostClient, new_session
from modelhost.errors import ModelNotReady, UpstreamError

pytestmark = pytest.mark.unit

MiB = 2**20
DEADLINE_S = 10.0


def spec(model: str) -> ModelSpec:
    return ModelSpec(id=model, family="caption", backend="blip", source=f"org/{model}", memory_estimate_mb=600)


class InstantEffects:
    """Loads and unloads that finish at once; ``loads`` records the order."""

    def __init__(self) -> None:
        self.loads: list[str] = []

    async def load(self, s: ModelSpec) -> Loaded:
        self.loads.append(s.id)
        return Loaded(peak_memory_bytes=600 * MiB, load_s=0.01, device="cpu")

    async def unload(self, s: ModelSpec, charged_bytes: int) -> Released:
        return Released(charged_bytes, True, 0.01, "test")

    async def models(self, family: str) -> list:
        return []

    def device_used(self, device: str) -> None:
        return None

    def device_total(self, device: str) -> None:
        return None


class Service:
    """The family service's pull routes: ``cap-b`` is cached; ``cap-a`` is not, and its pull runs until
    ``finish`` (then done, or failed with ``error``)."""

    def __init__(self) -> None:
        self.finished = asyncio.Event()
        self.error: str | None = None
        self.pulls_started = 0

    def status(self, model: str) -> dict:
        if model == "cap-b":
            return {"model": model, "source": "org/cap-b", "kind": "hub", "state": "idle", "cached": True}
        if not self.pulls_started:
            return {"model": model, "source": "org/cap-a", "kind": "hub", "state": "idle", "cached": False}
        if not self.finished.is_set():
            return {"model": model, "source": "org/cap-a", "kind": "hub", "state": "pulling", "cached": False,
                    "bytes_done": 250_000_000, "bytes_total": 1_000_000_000, "rate_bytes_per_s": 100e6, "eta_s": 7.5}
        state = "failed" if self.error else "done"
        return {"model": model, "source": "org/cap-a", "kind": "hub", "state": state, "cached": not self.error,
                "bytes_done": 1_000_000_000, "bytes_total": 1_000_000_000, "error": self.error}

    async def get(self, request: web.Request) -> web.Response:
        return web.json_response(self.status(request.match_info["name"]))

    async def post(self, request: web.Request) -> web.Response:
        self.pulls_started += 1
        return web.json_response(self.status(request.match_info["name"]))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[ModelAccess, Coordinator, InstantEffects, Service]]:
    svc = Service()
    app = web.Application()
    app.router.add_get("/v1/models/{name}/pull", svc.get)
    app.router.add_post("/v1/models/{name}/pull", svc.post)
    server = TestServer(app)
    await server.start_server()
    session = new_session()
    client = ModelHostClient("caption-svc", str(server.make_url("")), session)
    catalog = Catalog(models=[spec("cap-a"), spec("cap-b")])
    effects = InstantEffects()
    # Room for one model at a time: every change of model is a swap.
    coordinator = Coordinator(catalog, effects, {"cpu": 1000 * MiB}, FootprintStore(tmp_path / "footprints.json"),
                              config=PolicyConfig(idle_grace_s=0.0), max_queue=8, meter_interval_s=None)
    access = ModelAccess(catalog, {"caption": client}, GatewayMetrics(), coordinator, request_timeout_s=DEADLINE_S)
    access.pulls = Pulls(catalog, {"caption": client}, coordinator, poll_s=0.02)
    yield access, coordinator, effects, svc
    await access.pulls.close()
    await coordinator.close()
    client.close()
    await session.close()
    await server.close()


async def until(cond, what: str) -> None:  # noqa: ANN001
    end = time.monotonic() + DEADLINE_S
    while not cond():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


async def use(access: ModelAccess, model: str) -> str:
    async with access.hold(model, "caption"):
        return model


async def test_a_model_waiting_for_its_download_does_not_block_another_models_swap(world) -> None:  # noqa: ANN001
    access, coordinator, effects, svc = world
    waiting = asyncio.create_task(use(access, "cap-a"))
    await until(lambda: svc.pulls_started == 1, "the pull of cap-a started")
    # cap-a downloads and holds nothing at the coordinator: cap-b swaps in and serves meanwhile.
    assert coordinator.model_state("cap-a").ledger_state == "unloaded"
    assert await asyncio.wait_for(use(access, "cap-b"), DEADLINE_S) == "cap-b"
    assert effects.loads == ["cap-b"] and not waiting.done()

    svc.finished.set()  # the download ends: cap-a takes the slot (cap-b, idle, is swapped out) and serves
    assert await asyncio.wait_for(waiting, DEADLINE_S) == "cap-a"
    assert effects.loads == ["cap-b", "cap-a"]
    # Known cached now: the next request asks the service nothing.
    assert await use(access, "cap-a") == "cap-a" and svc.pulls_started == 1


async def test_concurrent_requests_for_one_model_share_one_pull(world) -> None:  # noqa: ANN001
    access, coordinator, effects, svc = world
    tasks = [asyncio.create_task(use(access, "cap-a")) for _ in range(5)]
    await until(lambda: svc.pulls_started == 1, "the pull started")
    svc.finished.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S) == ["cap-a"] * 5
    assert svc.pulls_started == 1 and effects.loads == ["cap-a"]


async def test_a_failed_pull_is_502_with_the_reason_and_loads_nothing(world) -> None:  # noqa: ANN001
    access, coordinator, effects, svc = world
    svc.error = "cannot fetch org/cap-a from http://127.0.0.1:9: 127.0.0.1:9 refused the connection"
    svc.finished.set()
    with pytest.raises(UpstreamError) as e:
        await use(access, "cap-a")
    assert e.value.status == 502 and e.value.code == "pull_failed" and "refused the connection" in e.value.message
    assert effects.loads == []


async def test_a_request_that_outlasts_the_download_is_503_with_its_progress(world) -> None:  # noqa: ANN001
    access, coordinator, effects, svc = world
    with pytest.raises(ModelNotReady) as e:
        async with access.hold("cap-a", "caption", timeout_s=0.3):
            pass
    assert e.value.status == 503 and "still downloading (250.0 MB of 1.0 GB, 100.0 MB/s, 8 s left)" in e.value.message
    assert e.value.retry_after_s == 30.0 and effects.loads == []
    svc.finished.set()  # the pull went on without the request; the next one loads
    assert await use(access, "cap-a") == "cap-a"


async def test_a_service_without_a_pull_route_is_asked_once(tmp_path: Path) -> None:
    asked: list[str] = []

    async def no_route(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"src": "caption-svc", "request_id": None, "error": {
            "type": "not_found_error", "code": "route_not_found", "message": "no route", "param": None}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", no_route)
    server = TestServer(app)
    await server.start_server()
    session = new_session()
    client = ModelHostClient("caption-svc", str(server.make_url("")), session)
    catalog = Catalog(models=[spec("cap-a")])
    coordinator = Coordinator(catalog, InstantEffects(), {"cpu": 1000 * MiB}, FootprintStore(tmp_path / "f.json"),
                              config=PolicyConfig(), max_queue=8, meter_interval_s=None)
    pulls = Pulls(catalog, {"caption": client}, coordinator)
    try:
        for _ in range(3):  # the load goes ahead without a pull, and the next requests ask nothing
            await pulls.ensure_cached(catalog.models[0], DEADLINE_S)
        assert asked == ["/v1/models/cap-a/pull"]
    finally:
        await pulls.close()
        await coordinator.close()
        client.close()
        await session.close()
        await server.close()


async def test_a_tenant_model_is_not_pulled_here_and_an_unknown_one_is_404(world) -> None:  # noqa: ANN001
    from modelhost.errors import ModelNotFound

    from gateway.pulls import PullUnsupported

    catalog = Catalog(models=[ModelSpec(id="llama", family="llm", backend="ollama", source="llama3.1:8b",
                                        options={"url": "http://127.0.0.1:11434"})])
    pulls = Pulls(catalog, {}, world[1])
    with pytest.raises(PullUnsupported) as e:
        await pulls.start("llama")
    assert e.value.status == 409 and "ollama pull llama3.1:8b" in e.value.message
    with pytest.raises(ModelNotFound):
        await pulls.status("nope")
    await pulls.ensure_cached(catalog.models[0], 1.0)  # the gate lets a tenant's model through at once


async def test_the_event_stream_ends_with_end_or_says_the_pull_was_lost(world) -> None:  # noqa: ANN001
    access, _, _, svc = world
    first = await access.pulls.start("cap-a")
    assert first.state == "pulling"
    svc.finished.set()
    events = [chunk.decode() async for chunk in access.pulls.events("cap-a", first)]
    assert events[0].startswith("event: progress\n") and events[-1].startswith("event: end\n")
    assert '"state":"done"' in events[-1]

    svc.finished.clear()
    svc.pulls_started = 0  # the service restarted: it answers idle for a pull it no longer knows
    events = [chunk.decode() async for chunk in access.pulls.events("cap-a", first)]
    assert events[-1].startswith("event: error\n") and "pull_lost" in events[-1]
