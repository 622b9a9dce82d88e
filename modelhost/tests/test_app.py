"""The model host API through HTTP: create_host_app with a tiny test family, its real runtime and worker.

The family ("arith") is defined here: ArithmeticBackend from tests/doubles, one inference route that leases
and infers, and one that holds a lease until the test lets it go (to make "in flight" deterministic).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import psutil
import pytest
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel

from modelhost.app import Family, create_host_app, host
from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import REQUEST_ID_HEADER
from modelhost.meter import HostMeter
from modelhost.settings import HostSettings

pytestmark = pytest.mark.app

MiB = 1024 * 1024
DEADLINE_S = 10.0
FAMILY = Family(name="arith", service="arith-svc", backends={"arith": "tests.doubles.arithmetic:ArithmeticBackend"})
CATALOG = Catalog(
    models=[
        ModelSpec(id="a", family="arith", backend="arith", source="none", options={"alloc_mb": 16}),
        ModelSpec(id="b", family="arith", backend="arith", source="none"),
        # Another family's model: this service neither lists nor needs a backend for it.
        ModelSpec(id="someone-elses", family="caption", backend="blip", source="none"),
    ]
)


class DoubleRequest(BaseModel):
    model: str
    x: int


router = APIRouter()


@router.post("/v1/double")
async def double(body: DoubleRequest, request: Request) -> dict[str, Any]:
    async with host(request).runtime.lease(body.model) as lease:
        result = await lease.infer(body.x)
    return {"value": result["value"]}


@router.post("/v1/hold")
async def hold(body: DoubleRequest, request: Request) -> dict[str, Any]:
    """A request that stays in flight (holding its lease) until the test sets app.state.release."""
    async with host(request).runtime.lease(body.model):
        request.app.state.held.set()
        await request.app.state.release.wait()
    return {"released": True}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    app = create_host_app(FAMILY, HostSettings(cache_dir=tmp_path / "cache"), CATALOG, [router], meter=HostMeter())
    app.state.held = asyncio.Event()
    app.state.release = asyncio.Event()
    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://arith-svc", timeout=DEADLINE_S) as c:
            yield c


def assert_envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "arith-svc"
    assert body["error"]["code"] == code
    assert body["request_id"] == r.headers[REQUEST_ID_HEADER]
    return body


def metric(app: FastAPI, name: str, **labels: str) -> float:
    return host_of(app).metrics.registry.get_sample_value(name, {"family": "arith", **labels}) or 0.0


def host_of(app: FastAPI):  # noqa: ANN201 - modelhost.app.Host
    return app.state.host


async def test_live_answers_ok(client) -> None:
    r = await client.get("/health/live")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_ready_answers_before_any_model_is_loaded(client) -> None:
    r = await client.get("/health/ready")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "family": "arith", "models": 2, "worker_pid": None}


async def test_metrics_exports_model_state(client) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'roundhouse_model_state{family="arith",model="a",state="unloaded"} 1.0' in r.text
    assert 'roundhouse_model_state{family="arith",model="a",state="ready"} 0.0' in r.text
    assert (await client.post("/v1/models/a/load")).status_code == 200
    r = await client.get("/metrics")
    assert 'roundhouse_model_state{family="arith",model="a",state="ready"} 1.0' in r.text
    assert 'roundhouse_model_state{family="arith",model="a",state="unloaded"} 0.0' in r.text


async def test_metrics_say_unavailable_while_the_rows_do(tmp_path: Path) -> None:
    lacking = {"b": "the b program is not installed"}  # what the family's check says is missing, per model
    family = Family(name="arith", service="arith-svc", backends=FAMILY.backends,
                    missing=lambda spec: lacking.get(spec.id))
    app = create_host_app(family, HostSettings(cache_dir=tmp_path / "cache"), CATALOG, meter=HostMeter())
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arith-svc") as c):
        rows = {m["id"]: m["state"] for m in (await c.get("/v1/models")).json()["data"]}
        assert rows == {"a": "unloaded", "b": "unavailable"}
        await c.get("/metrics")
        assert metric(app, "roundhouse_model_state", model="b", state="unavailable") == 1
        assert metric(app, "roundhouse_model_state", model="b", state="unloaded") == 0
        assert metric(app, "roundhouse_model_state", model="a", state="unloaded") == 1

        lacking.clear()  # installed: decided again at the next look
        await c.get("/metrics")
        assert metric(app, "roundhouse_model_state", model="b", state="unloaded") == 1
        assert metric(app, "roundhouse_model_state", model="b", state="unavailable") == 0


async def test_models_lists_this_familys_catalog_models(client) -> None:
    r = await client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["family"] == "arith" and body["service"] == "arith-svc"
    assert [m["id"] for m in body["data"]] == ["a", "b"]
    assert {m["state"] for m in body["data"]} == {"unloaded"}
    assert body["worker_pid"] is None and body["worker_memory_bytes"] == 0
    assert body["meter"] == "host"


async def test_load_returns_ready_with_memory_and_unload_ends_the_worker(client) -> None:
    r = await client.post("/v1/models/a/load")
    assert r.status_code == 200
    loaded = r.json()
    assert loaded["state"] == "ready" and loaded["device"] == "cpu"
    assert loaded["memory_bytes"] >= 14 * MiB  # alloc_mb: 16
    listing = (await client.get("/v1/models")).json()
    pid = listing["worker_pid"]
    assert pid is not None and psutil.pid_exists(pid)
    assert listing["worker_memory_bytes"] >= loaded["memory_bytes"]
    assert [m["state"] for m in listing["data"]] == ["ready", "unloaded"]

    r = await client.post("/v1/double", json={"model": "a", "x": 21})
    assert r.status_code == 200 and r.json() == {"value": 42}

    r = await client.post("/v1/models/a/unload")
    assert r.status_code == 200
    unloaded = r.json()
    assert unloaded["state"] == "unloaded" and unloaded["worker_stopped"] is True
    assert unloaded["freed_bytes"] >= 16 * MiB
    assert not psutil.pid_exists(pid)
    listing = (await client.get("/v1/models")).json()
    assert listing["worker_pid"] is None
    assert [m["state"] for m in listing["data"]] == ["unloaded", "unloaded"]


async def test_concurrent_load_requests_coalesce(app, client) -> None:
    responses = await asyncio.gather(*(client.post("/v1/models/b/load") for _ in range(5)))
    assert [r.status_code for r in responses] == [200] * 5
    assert metric(app, "roundhouse_model_transitions_total", model="b", from_state="unloaded", to_state="loading") == 1


async def test_unknown_model_is_404_model_not_found(client) -> None:
    for path in ("/v1/models/nope/load", "/v1/models/nope/unload", "/v1/models/someone-elses/load"):
        body = assert_envelope(await client.post(path), 404, "model_not_found")
        assert body["error"]["type"] == "not_found_error"
    assert_envelope(await client.post("/v1/double", json={"model": "nope", "x": 1}), 404, "model_not_found")


async def test_inference_on_unloaded_model_is_503_with_retry_after(client) -> None:
    r = await client.post("/v1/double", json={"model": "a", "x": 1})
    assert_envelope(r, 503, "model_not_ready")
    assert int(r.headers["Retry-After"]) >= 1


async def test_unload_of_leased_model_is_409_and_drain_waits_for_it(app, client, wait_until) -> None:
    assert (await client.post("/v1/models/a/load")).status_code == 200
    holding = asyncio.create_task(client.post("/v1/hold", json={"model": "a", "x": 0}))
    await asyncio.wait_for(app.state.held.wait(), DEADLINE_S)

    body = assert_envelope(await client.post("/v1/models/a/unload"), 409, "model_in_use")
    assert body["error"]["param"] == "drain"

    draining = asyncio.create_task(client.post("/v1/models/a/unload", params={"drain": "true"}))
    entry = host_of(app).runtime.entries["a"]
    await wait_until(lambda: entry.draining, "the unload drains")
    assert not draining.done()
    assert_envelope(await client.post("/v1/double", json={"model": "a", "x": 1}), 503, "model_not_ready")
    assert not draining.done()

    app.state.release.set()
    assert (await asyncio.wait_for(holding, DEADLINE_S)).json() == {"released": True}
    r = await asyncio.wait_for(draining, DEADLINE_S)
    assert r.status_code == 200 and r.json()["state"] == "unloaded"


async def test_unknown_route_and_bad_body_are_envelopes(client) -> None:
    assert_envelope(await client.get("/v1/nothing-here"), 404, "route_not_found")
    body = assert_envelope(await client.post("/v1/double", json={"model": "a"}), 422, "validation_error")
    assert body["error"]["param"] == "x"


async def test_shutdown_ends_the_worker(app) -> None:
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arith-svc") as c:
            assert (await c.post("/v1/models/a/load")).status_code == 200
            pid = (await c.get("/v1/models")).json()["worker_pid"]
            assert psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid)


class LostGpuMeter(HostMeter):
    """The hardware boundary after an Xid error: every device reading fails."""

    kind = "nvml"

    def device(self):  # noqa: ANN201
        from modelhost.meter import MeterError

        raise MeterError("NVML: GPU is lost")


async def test_models_are_listed_with_the_meters_error_when_the_gpu_is_lost(tmp_path: Path) -> None:
    from modelhost.contract import ModelsReply

    app = create_host_app(FAMILY, HostSettings(cache_dir=tmp_path / "cache"), CATALOG, [router], meter=LostGpuMeter())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://arith-svc") as c:
            r = await c.get("/v1/models")
    assert r.status_code == 200, r.text
    reply = ModelsReply.model_validate(r.json())
    assert reply.device is None and reply.meter_error == "NVML: GPU is lost"
    assert {m.id for m in reply.data} == {"a", "b"}  # the runtime still tells its models (its family only)
