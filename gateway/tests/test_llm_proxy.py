"""The OpenAI routes of external tenants through the whole gateway (``create_app()`` served by uvicorn on
loopback, its real coordinator) in front of an Ollama stand-in written here (an aiohttp server on loopback that
records every call): the model name is rewritten to the server's, a stream is relayed chunk by chunk under
a lease held until its last byte, a tenant that does not fit beside another is evicted through its
server's API before the other loads, reconciliation charges and forgets what the server did behind the
gateway's back, and bad requests are 4xx in the envelope before any server is asked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import CoordinatorSettings, GatewaySettings
from gateway.main import create_app
from tests.doubles.fake_nvml import FakeNvml
from tests.procs import free_port

pytestmark = pytest.mark.app

MiB = 2**20
SIZES = {"llama3.1:8b": 4000 * MiB, "qwen2.5vl:7b": 3000 * MiB}


class FakeOllama:
    """Ollama's /api/ps and /api/generate (load with no prompt, unload with keep_alive 0) and its OpenAI
    routes. A stream sends its first chunk, then waits for ``gate`` before the rest."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.loaded: dict[str, int] = {}
        self.most_loaded = 0  # the most bytes it ever held at once
        self.gate = asyncio.Event()
        app = web.Application()
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/generate", self.generate)
        for route in ("chat/completions", "completions", "embeddings"):
            app.router.add_post(f"/v1/{route}", self.openai)
        self.app = app

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": n, "model": n, "size": b, "size_vram": 0} for n, b in self.loaded.items()]})

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(("/api/generate", body))
        if body.get("keep_alive") == 0:
            self.loaded.pop(body["model"], None)
            return web.json_response({"model": body["model"], "done": True, "done_reason": "unload"})
        self.loaded[body["model"]] = SIZES[body["model"]]
        self.most_loaded = max(self.most_loaded, sum(self.loaded.values()))
        return web.json_response({"model": body["model"], "done": True, "done_reason": "load"})

    async def openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.calls.append((request.path, body))
        if body.get("fail"):
            return web.json_response({"error": {"message": "bad sampler", "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=400)
        if not body.get("stream"):
            return web.json_response({"object": "chat.completion", "model": body["model"], "path": request.path,
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f'data: {{"model": "{body["model"]}", "choices": [{{"delta": {{"content": "t{i}"}}}}]}}\n\n'.encode())
            if i == 0:
                await self.gate.wait()
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def fake_face_service(ollama: FakeOllama, seen: list[str]) -> web.Application:
    """A face family service's model host API: its load records what Ollama held at that moment."""
    loaded: dict[str, int] = {}

    def row(name: str) -> dict[str, Any]:
        return {"id": name, "family": "face", "backend": "insightface", "state": "ready" if name in loaded else "unloaded",
                "device_requested": "cpu", "device": "cpu", "peak_memory_bytes": loaded.get(name),
                "memory_estimate_bytes": 3000 * MiB}

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"family": "face", "service": "face-svc", "meter": "host",
                                  "data": [row(n) for n in loaded]})

    async def load(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        seen.append(f"face load while ollama holds {sorted(ollama.loaded)}")
        loaded[name] = 3000 * MiB
        return web.json_response(row(name))

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/models/{name}/load", load)
    return app


def catalog(ollama_url: str | None) -> str:
    text = "models:\n  - {id: cap-a, family: caption, backend: blip, source: /nowhere, device: cpu, memory_estimate_mb: 64}\n"
    text += "  - {id: face-a, family: face, backend: insightface, source: /nowhere, device: cpu, memory_estimate_mb: 3000}\n"
    if ollama_url:
        text += f"""\
  - {{id: llama, family: llm, backend: ollama, source: "llama3.1:8b", device: cpu, memory_estimate_mb: 4000,
      options: {{url: "{ollama_url}"}}}}
  - {{id: vision, family: llm, backend: ollama, source: "qwen2.5vl:7b", device: cpu, memory_estimate_mb: 3000,
      options: {{url: "{ollama_url}"}}}}
"""
    return text


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, ollama_url: str | None, face_url: str | None = None) -> AsyncIterator[tuple[str, Any]]:
    """The gateway on a loopback port, its budget 6000 MiB: room for one of the two tenants, not both."""
    (tmp_path / "catalog.yaml").write_text(catalog(ollama_url))
    down = f"http://127.0.0.1:{free_port()}"
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"caption": down, "face": face_url or down},
                               max_upload_bytes=64 * 1024)
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
        yield f"http://127.0.0.1:{port}", app.state.gateway
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def ollama(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[FakeOllama, str]]:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    fake = FakeOllama()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    fake.gate.set()
    await server.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


CHAT = {"model": "llama", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "seed": 7}


async def test_a_chat_is_forwarded_with_the_servers_model_name_and_its_answer_relayed(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        async with http.post(f"{base}/v1/chat/completions", json=CHAT) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert answer["choices"][0]["message"]["content"] == "hello"
        path, sent = fake.calls[-1]
        assert path == "/v1/chat/completions" and sent == {**CHAT, "model": "llama3.1:8b"}  # every other field as sent
        assert ("/api/generate", {"model": "llama3.1:8b", "keep_alive": -1, "stream": False}) in fake.calls
        ledger = g.coordinator.model_state("llama")
        assert ledger.ledger_state == "ready" and ledger.charged_bytes == SIZES["llama3.1:8b"]
        for route, body in (("completions", {"model": "llama", "prompt": "once"}),
                            ("embeddings", {"model": "llama", "input": ["a", "b"]})):
            async with http.post(f"{base}/v1/{route}", json=body) as r:
                assert r.status == 200 and (await r.json())["path"] == f"/v1/{route}"
            assert fake.calls[-1] == (f"/v1/{route}", {**body, "model": "llama3.1:8b"})


async def test_a_stream_is_relayed_chunk_by_chunk_under_a_lease_held_to_its_last_byte(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        async with http.post(f"{base}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readuntil(b"\n\n")
            assert b'"t0"' in first
            # the server holds its second chunk back: the lease is held meanwhile
            assert g.coordinator.view()["cpu"].resident["llama"].in_flight == 1
            fake.gate.set()
            rest = await r.content.read()
        events = [e for e in (first + rest).decode().split("\n\n") if e]
        assert events == [f'data: {{"model": "llama3.1:8b", "choices": [{{"delta": {{"content": "t{i}"}}}}]}}'
                          for i in range(3)] + ["data: [DONE]"]
        assert fake.calls[-1][1]["stream"] is True
        deadline = time.monotonic() + 10
        while g.coordinator.view()["cpu"].resident["llama"].in_flight:  # released once the response ended
            assert time.monotonic() < deadline, "the lease was not released after the stream"
            await asyncio.sleep(0.01)


async def test_a_tenant_that_does_not_fit_beside_another_is_unloaded_at_its_server_first(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        for model in ("llama", "vision", "llama"):
            async with http.post(f"{base}/v1/chat/completions", json={**CHAT, "model": model}) as r:
                assert r.status == 200, await r.text()
        generate = [(b["model"], b["keep_alive"]) for p, b in fake.calls if p == "/api/generate"]
        assert generate == [("llama3.1:8b", -1), ("llama3.1:8b", 0), ("qwen2.5vl:7b", -1), ("qwen2.5vl:7b", 0),
                            ("llama3.1:8b", -1)]
        assert fake.most_loaded == 4000 * MiB  # never both at once
        assert g.coordinator.model_state("vision").ledger_state == "unloaded"


async def test_a_resident_tenant_found_at_start_is_unloaded_through_its_server_before_a_face_model_loads(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    fake.loaded["llama3.1:8b"] = SIZES["llama3.1:8b"]  # resident and large before the gateway starts
    seen: list[str] = []
    face = TestServer(fake_face_service(fake, seen), host="127.0.0.1")
    await face.start_server()
    try:
        async with gateway(tmp_path, url, str(face.make_url("")).rstrip("/")) as (base, g):
            assert g.coordinator.model_state("llama").charged_bytes == SIZES["llama3.1:8b"]  # charged at start
            async with http.post(f"{base}/admin/models/face-a/load") as r:
                assert r.status == 200, await r.text()
            assert ("/api/generate", {"model": "llama3.1:8b", "keep_alive": 0, "stream": False}) in fake.calls
            assert seen == ["face load while ollama holds []"]  # never both at once
            assert g.coordinator.model_state("llama").ledger_state == "unloaded"
    finally:
        await face.close()


async def test_a_face_load_waits_for_a_chat_stream_to_end_and_never_meets_the_llm(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    seen: list[str] = []
    face = TestServer(fake_face_service(fake, seen), host="127.0.0.1")
    await face.start_server()
    try:
        async with gateway(tmp_path, url, str(face.make_url("")).rstrip("/")) as (base, g):
            async with http.post(f"{base}/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                await r.content.readuntil(b"\n\n")  # the stream has begun; its lease is held
                loading = asyncio.create_task(http.post(f"{base}/admin/models/face-a/load"))
                deadline = time.monotonic() + 10
                while g.coordinator.view()["cpu"].queues.get("face-a") != 1:  # queued behind the stream
                    assert time.monotonic() < deadline and not loading.done()
                    await asyncio.sleep(0.01)
                assert seen == [] and fake.loaded == {"llama3.1:8b": SIZES["llama3.1:8b"]}
                fake.gate.set()
                await r.content.read()
            face_answer = await loading
            assert face_answer.status == 200, await face_answer.text()
            assert seen == ["face load while ollama holds []"]  # the LLM went once its stream had ended
            assert ("/api/generate", {"model": "llama3.1:8b", "keep_alive": 0, "stream": False}) in fake.calls
    finally:
        await face.close()


async def test_reconciliation_charges_what_the_server_loaded_and_forgets_what_it_let_go_behind_our_back(
        ollama: tuple[FakeOllama, str], tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        assert g.coordinator.model_state("vision").ledger_state == "unloaded"
        fake.loaded["qwen2.5vl:7b"] = SIZES["qwen2.5vl:7b"]  # someone called Ollama directly
        await g.coordinator.reconcile("llm")
        ledger = g.coordinator.model_state("vision")
        assert ledger.ledger_state == "ready" and ledger.charged_bytes == SIZES["qwen2.5vl:7b"]
        fake.loaded.clear()  # Ollama's own keep_alive ran out
        await g.coordinator.reconcile("llm")
        assert g.coordinator.model_state("vision").ledger_state == "unloaded"


async def test_a_server_that_is_down_is_503_with_retry_after_and_nothing_stays_charged(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with gateway(tmp_path, f"http://127.0.0.1:{free_port()}") as (base, g):  # nothing listens there
        async with http.post(f"{base}/v1/chat/completions", json=CHAT) as r:
            body = await r.json()
        assert r.status == 503 and body["error"]["code"] == "service_unavailable" and r.headers["Retry-After"]
        assert "not reachable" in body["error"]["message"]
        assert g.coordinator.model_state("llama").ledger_state == "unloaded"
        assert g.coordinator.view()["cpu"].used_bytes == 0


async def test_the_servers_own_4xx_keeps_its_status_in_the_envelope(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        async with http.post(f"{base}/v1/chat/completions", json={**CHAT, "fail": True}) as r:
            body = await r.json()
        assert r.status == 400 and body["src"].startswith("ollama@") and "bad sampler" in body["error"]["message"]
        assert g.coordinator.view()["cpu"].resident["llama"].in_flight == 0


@pytest.mark.parametrize("body, status, code, param", [
    (b"{not json", 400, "invalid_json", None),
    (b"[]", 400, "invalid_json", None),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "bad_request", "model"),
    (json.dumps({"model": 3, "messages": []}).encode(), 400, "bad_request", "model"),
    (json.dumps({"model": "llama", "messages": "hi"}).encode(), 400, "bad_request", "messages"),
    (json.dumps({"model": "llama", "messages": [{"role": "user"}], "stream": "yes"}).encode(), 400, "bad_request", "stream"),
    (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model_not_found", "model"),
    (json.dumps({"model": "cap-a", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404, "model_not_found", "model"),
    (json.dumps({"model": "llama", "messages": [{"role": "user", "content": "x" * 70_000}]}).encode(), 413,
     "payload_too_large", None),
])
async def test_bad_requests_are_4xx_before_any_server_is_asked(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path,
        body: bytes, status: int, code: str, param: str | None) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        async with http.post(f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}) as r:
            answer = await r.json()
        assert r.status == status and answer["error"]["code"] == code and answer["error"]["param"] == param, answer
        assert answer["src"] == "gateway" and fake.calls == []


async def test_a_body_not_declared_json_is_415_before_any_server_is_asked(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            async with http.post(f"{base}/v1/chat/completions", data=json.dumps(CHAT).encode(),
                                 headers={"Content-Type": ctype}) as r:
                answer = await r.json()
            assert r.status == 415 and answer["error"]["code"] == "unsupported_content_type", answer
    assert fake.calls == []


async def test_with_no_llm_model_the_routes_answer_404_and_the_document_declares_them(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with gateway(tmp_path, None) as (base, g):
        for route, body in (("chat/completions", CHAT), ("completions", {"model": "llama", "prompt": "x"}),
                            ("embeddings", {"model": "llama", "input": "x"})):
            async with http.post(f"{base}/v1/{route}", json=body) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"
        async with http.get(f"{base}/openapi.json") as r:
            doc = await r.json()
    for route, required in (("chat/completions", "messages"), ("completions", "prompt"), ("embeddings", "input")):
        op = doc["paths"][f"/v1/{route}"]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["required"]) == {"model", required} and "$defs" not in json.dumps(schema)
        assert {"400", "404", "413", "415", "503"} <= set(op["responses"])


async def test_v1_models_lists_the_tenants_owned_by_their_server(
        ollama: tuple[FakeOllama, str], http: aiohttp.ClientSession, tmp_path: Path) -> None:
    fake, url = ollama
    async with gateway(tmp_path, url) as (base, g):
        async with http.get(f"{base}/v1/models") as r:
            cards = {m["id"]: m for m in (await r.json())["data"]}
        async with http.get(f"{base}/admin/models") as r:
            admin = {m["id"]: m for m in (await r.json())["data"]}
    assert cards["llama"]["owned_by"] == "ollama" and cards["llama"]["family"] == "llm"
    assert cards["cap-a"]["owned_by"] == "roundhouse"
    assert admin["llama"]["service"].startswith("ollama@") and admin["llama"]["state"] == "unloaded"
