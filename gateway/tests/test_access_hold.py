"""``ModelAccess.hold`` and its ``Upstream`` against a real HTTP server on loopback standing in for a family
service (aiohttp's test server; the gateway's real ``ModelHostClient`` talks to it): the model is held for
the block however it ends, a model the service no longer holds is held anew and the call made once more,
and a stream's errors are mapped as a request's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.access import ModelAccess
from gateway.metrics import GatewayMetrics
from modelhost.catalog import load_catalog
from modelhost.client import ModelHostClient, new_session
from modelhost.errors import DeadlineExceeded, ServiceUnreachable, UpstreamEnvelope, UpstreamError

pytestmark = pytest.mark.unit

CATALOG = """
models:
  - {id: cap-a, family: caption, backend: blip, source: /nowhere, device: cpu, memory_estimate_mb: 64}
"""


class RecordingCoordinator:
    """Grants at once and records what the access asked of it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def acquire(self, model: str, *, lane: str, timeout_s: float) -> None:
        self.events.append(f"acquire {model} {lane}")

    def release(self, model: str) -> None:
        self.events.append(f"release {model}")

    def vanished(self, model: str) -> None:
        self.events.append(f"vanished {model}")

    def schedule_reconcile(self, family: str) -> None:
        self.events.append(f"reconcile {family}")

    @property
    def held(self) -> int:
        return sum(e.startswith("acquire") for e in self.events) - sum(e.startswith("release") for e in self.events)


def envelope(status: int, code: str) -> web.Response:
    return web.json_response({"src": "caption-svc", "request_id": "r", "error": {
        "type": "x", "code": code, "message": f"{code} from the test service", "param": None}}, status=status)


@pytest.fixture()
async def service():
    """A family service's stand-in: /echo answers once 503 model_not_ready when told to, /stream streams."""
    state = {"not_ready": 0, "calls": 0}

    async def echo(request: web.Request) -> web.Response:
        state["calls"] += 1
        if state["not_ready"] > 0:
            state["not_ready"] -= 1
            return envelope(503, "model_not_ready")
        return web.json_response({"ok": True, "calls": state["calls"]})

    async def bad(request: web.Request) -> web.Response:
        return web.Response(status=500, text="no envelope")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async def stream(request: web.Request) -> web.StreamResponse:
        if state["not_ready"] > 0:
            state["not_ready"] -= 1
            return envelope(503, "model_not_ready")
        if request.query.get("fail"):
            return envelope(400, "empty_input")
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"chunk{i};".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/bad", bad)
    app.router.add_post("/slow", slow)
    app.router.add_post("/stream", stream)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, state
    await server.close()


@pytest.fixture()
async def access(service, tmp_path: Path):
    server, _ = service
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    session = new_session()
    client = ModelHostClient("caption-svc", str(server.make_url("")), session)
    coordinator = RecordingCoordinator()
    yield ModelAccess(load_catalog(tmp_path / "catalog.yaml"), {"caption": client}, GatewayMetrics(), coordinator,
                      request_timeout_s=5), coordinator
    await session.close()


async def test_the_model_is_held_for_the_block_and_released_when_it_ends(access) -> None:
    access, coordinator = access
    async with access.hold("cap-a", "caption", lane="bulk") as upstream:
        assert await upstream.request("POST", "/echo", timeout_s=5) == {"ok": True, "calls": 1}
        assert coordinator.held == 1
    assert coordinator.events == ["acquire cap-a bulk", "release cap-a"]


async def test_a_model_the_service_no_longer_holds_is_held_anew_and_the_call_made_once_more(access, service) -> None:
    access, coordinator = access
    service[1]["not_ready"] = 1
    async with access.hold("cap-a", "caption") as upstream:
        assert await upstream.request("POST", "/echo", timeout_s=5) == {"ok": True, "calls": 2}
    assert coordinator.events == ["acquire cap-a interactive", "release cap-a", "vanished cap-a",
                                  "acquire cap-a interactive", "release cap-a"]


async def test_a_second_not_ready_is_the_answer(access, service) -> None:
    access, coordinator = access
    service[1]["not_ready"] = 2
    with pytest.raises(UpstreamEnvelope) as e:
        async with access.hold("cap-a", "caption") as upstream:
            await upstream.request("POST", "/echo", timeout_s=5)
    assert e.value.code == "model_not_ready" and e.value.status == 503 and e.value.retryable
    assert coordinator.held == 0


@pytest.mark.parametrize(("path", "error"), [("/bad", UpstreamError), ("/slow", DeadlineExceeded)])
async def test_service_failures_release_the_model_and_are_typed(access, path: str, error: type) -> None:
    access, coordinator = access
    with pytest.raises(error):
        async with access.hold("cap-a", "caption") as upstream:
            await upstream.request("POST", path, timeout_s=0.5)
    assert coordinator.held == 0


async def test_an_unreachable_service_is_503_and_is_reconciled(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    async with new_session() as session:
        client = ModelHostClient("caption-svc", "http://127.0.0.1:9", session)  # discard port: refused
        coordinator = RecordingCoordinator()
        access = ModelAccess(load_catalog(tmp_path / "catalog.yaml"), {"caption": client}, GatewayMetrics(),
                             coordinator, request_timeout_s=5)
        with pytest.raises(ServiceUnreachable) as e:
            async with access.hold("cap-a", "caption") as upstream:
                await upstream.request("POST", "/echo", timeout_s=2)
    assert e.value.status == 503 and e.value.retryable
    assert "reconcile caption" in coordinator.events and coordinator.held == 0


async def test_a_stream_is_read_as_it_comes_while_the_model_is_held(access) -> None:
    access, coordinator = access
    async with access.hold("cap-a", "caption") as upstream:
        async with upstream.stream("POST", "/stream", first_byte_timeout_s=5) as resp:
            body = b"".join([chunk async for chunk in resp.content.iter_any()])
            assert coordinator.held == 1
    assert body == b"chunk0;chunk1;chunk2;" and coordinator.held == 0


async def test_a_stream_maps_errors_as_a_request_and_retries_its_opening_once(access, service) -> None:
    access, coordinator = access
    with pytest.raises(UpstreamEnvelope) as e:
        async with access.hold("cap-a", "caption") as upstream:
            async with upstream.stream("POST", "/stream?fail=1", first_byte_timeout_s=5):
                pass
    assert (e.value.status, e.value.code, e.value.src) == (400, "empty_input", "caption-svc")
    service[1]["not_ready"] = 1
    async with access.hold("cap-a", "caption") as upstream:
        async with upstream.stream("POST", "/stream", first_byte_timeout_s=5) as resp:
            assert await resp.read() == b"chunk0;chunk1;chunk2;"
    assert "vanished cap-a" in coordinator.events and coordinator.held == 0


async def test_an_error_raised_inside_the_stream_block_is_not_retried(access) -> None:
    access, coordinator = access
    with pytest.raises(UpstreamEnvelope):
        async with access.hold("cap-a", "caption") as upstream:
            async with upstream.stream("POST", "/stream", first_byte_timeout_s=5):
                raise UpstreamEnvelope(503, {"error": {"code": "model_not_ready", "message": "later"}}, None)
    assert "vanished cap-a" not in coordinator.events and coordinator.held == 0

