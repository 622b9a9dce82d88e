"""The gateway's hop under concurrency: the whole gateway (``create_app()`` served by uvicorn on loopback,
its real coordinator and client) in front of a caption service stand-in written here (an aiohttp server
on loopback) that holds every caption until 16 are in flight at once. Nothing between the two (the
client's pool, the coordinator's grants, the server) may hold a request back: all 16 reach the service
together, each on a connection of its own, and the next 16 reuse those connections.

The stand-in's wait for the 16th has a backstop so that a gateway with a ceiling fails the count here
instead of hanging; no figure of time is asserted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from gateway.config import CoordinatorSettings, GatewaySettings
from gateway.main import create_app
from tests.doubles.fake_nvml import FakeNvml
from tests.procs import free_port

pytestmark = pytest.mark.app

N = 16
BACKSTOP_S = 20.0  # only so that a ceiling fails the count instead of hanging the test


class CaptionService:
    """The caption family's host API, enough for the gateway: load, list, and captions that wait for
    ``N`` in flight at once. It counts the most in flight and the connections they came on."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.peers: list[set[Any]] = []  # per round, the gateway's ends of the connections captions came on
        self.all_in = asyncio.Event()
        self.loaded: dict[str, dict[str, Any]] = {}
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health/ready", self.ready)
        app.router.add_post("/v1/models/{name}/load", self.load)
        app.router.add_post("/v1/captions", self.caption)
        self.app = app

    def new_round(self) -> None:
        self.all_in = asyncio.Event()
        self.peers.append(set())

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "family": "caption", "service": "caption-svc", "meter": "host",
                                  "data": list(self.loaded.values())})

    async def ready(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "family": "caption", "models": len(self.loaded)})

    async def load(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        row = {"id": name, "family": "caption", "backend": "blip", "state": "ready", "device_requested": "cpu",
               "device": "cpu", "memory_bytes": 0, "peak_memory_bytes": 0, "memory_estimate_bytes": 0, "load_s": 0.0}
        self.loaded[name] = row
        return web.json_response(row)

    async def caption(self, request: web.Request) -> web.Response:
        await request.read()
        self.peers[-1].add(request.transport.get_extra_info("peername") if request.transport else None)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= N:
            self.all_in.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_in.wait(), BACKSTOP_S)
        finally:
            self.in_flight -= 1
        return web.json_response({"object": "image.caption", "model": "cap-a", "caption": "a test card", "tokens": 3,
                                  "width": 8, "height": 8, "timings": {"decode_ms": 0.1, "inference_ms": 1.0}})


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, caption_url: str) -> AsyncIterator[str]:
    (tmp_path / "catalog.yaml").write_text(
        "models:\n  - {id: cap-a, family: caption, backend: blip, source: /nowhere, device: cpu, memory_estimate_mb: 64}\n")
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"caption": caption_url})
    app = create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", memory_budget_mb={"cpu": 6000},
                                                   reconcile_interval_s=None))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        assert not task.done() and time.monotonic() < deadline, "the gateway did not start"
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def service(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[CaptionService, str]]:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    svc = CaptionService()
    server = TestServer(svc.app, host="127.0.0.1")
    await server.start_server()
    yield svc, str(server.make_url("")).rstrip("/")
    svc.all_in.set()
    await server.close()


def image_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def test_sixteen_captions_are_in_flight_at_the_service_at_once_and_reuse_their_connections(
        service: tuple[CaptionService, str], tmp_path: Path) -> None:
    svc, url = service
    body = {"image": image_b64(), "model": "cap-a"}
    async with gateway(tmp_path, url) as base, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2 * N)) as http:

        async def one() -> int:
            async with http.post(f"{base}/v1/images/captions", json=body) as r:
                assert r.status == 200, await r.text()
                return r.status

        for _ in range(2):
            svc.new_round()
            await asyncio.gather(*(one() for _ in range(N)))
            assert svc.most_in_flight == N, f"at most {svc.most_in_flight} of {N} captions were at the service at once"
    first, second = svc.peers
    assert len(first) == N  # one connection per request in flight
    assert second <= first  # the next round came on the same connections: kept alive, none opened
