"""External tenants: the catalog's llm entries, and the tenant clients (``gateway.tenants``) and the coordinator's
effects against small HTTP servers on loopback that speak Ollama's, llama-swap's and a plain server's APIs
(aiohttp test servers written here; each records what it received). The clients answer the family services'
contract types, so the coordinator charges, reconciles and evicts a tenant's model as its own."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.coordinator.effects import HttpEffects
from gateway.tenants import HttpTenantClient, LlamaSwapClient, OllamaClient, Tenants
from modelhost.catalog import CatalogError, ModelSpec, load_catalog
from modelhost.client import new_session
from modelhost.contract import ModelRow
from modelhost.errors import ServiceUnreachable, UpstreamEnvelope
from modelhost.meter import DeviceMemory
from tests.procs import free_port

pytestmark = pytest.mark.unit

MiB = 2**20
ISSUE_SHAPE = """\
models:
  - id: llama3.1            # the id clients use at this gateway
    family: llm
    backend: ollama         # ollama | llama-swap | http
    source: llama3.1:8b     # the model's name on that server
    device: cuda:0          # the ledger it is charged to
    memory_estimate_mb: 5200
    options: {url: http://ollama:11434}
"""


# catalog -------------------------------------------------------------------------------------------


def test_the_issue_catalog_shape_loads_as_a_tenant(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(ISSUE_SHAPE)
    spec = load_catalog(tmp_path / "c.yaml").models[0]
    assert spec.tenant and spec.backend == "ollama" and spec.source == "llama3.1:8b"
    assert spec.device == "cuda:0" and spec.memory_estimate_bytes == 5200 * MiB
    assert spec.options["url"] == "http://ollama:11434"


@pytest.mark.parametrize("entry, says", [
    ("{id: a, family: llm, backend: vllm, source: x, options: {url: 'http://h'}}", "needs backend ollama | llama-swap | http"),
    ("{id: a, family: llm, backend: ollama, source: x}", "needs options.url"),
    ("{id: a, family: llm, backend: llama-swap, source: x, options: {url: 'ollama:11434'}}", "needs options.url"),
    ("{id: a, family: llm, backend: http, source: x, options: {url: 'http://h', unload_url: 'http://h/u'}}",
     "needs options.residency_url"),
    ("{id: a, family: llm, backend: http, source: x, options: {url: 'http://h', residency_url: 'http://h/r'}}",
     "needs options.unload_url"),
    ("{id: a, family: caption, backend: ollama, source: x, options: {url: 'http://h'}}", "serves family 'llm' only"),
    ("{id: a, family: llm, backend: ollama, source: x, options: {url: 'http://h'}}\n"
     "  - {id: b, family: llm, backend: ollama, source: x, options: {url: 'http://h/'}}", "both name 'x' at http://h"),
])
def test_a_bad_tenant_entry_is_refused_at_catalog_load(tmp_path: Path, entry: str, says: str) -> None:
    (tmp_path / "c.yaml").write_text(f"models:\n  - {entry}\n")
    with pytest.raises(CatalogError, match=says):
        load_catalog(tmp_path / "c.yaml")


# servers -------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    async def body(self, request: web.Request) -> Any:
        body = await request.json() if request.can_read_body else None
        self.calls.append((request.method, request.path, body))
        return body


def fake_ollama(rec: Recorder, sizes: dict[str, int], loaded: dict[str, int], *, lag_polls: int = 0,
                on_release: Callable[[int], None] | None = None,
                errors: dict[str, tuple[int, str]] | None = None) -> web.Application:
    """/api/ps lists ``loaded``; /api/generate with no prompt loads, with keep_alive 0 unloads (the model
    stays listed for ``lag_polls`` reads of /api/ps, as Ollama's release runs after its answer; then
    ``on_release`` gets its bytes)."""
    leaving: dict[str, int] = {}

    async def ps(request: web.Request) -> web.Response:
        rec.calls.append(("GET", "/api/ps", None))
        for name in list(leaving):
            leaving[name] -= 1
            if leaving[name] < 0:
                del leaving[name]
                freed = loaded.pop(name, 0)
                if on_release is not None:
                    on_release(freed)
        return web.json_response({"models": [
            {"name": n, "model": n, "size": b + 100 * MiB, "size_vram": b, "expires_at": "2318-01-01T00:00:00Z"}
            for n, b in loaded.items()]})

    async def generate(request: web.Request) -> web.Response:
        body = await rec.body(request)
        name = body["model"] if ":" in body["model"] else body["model"] + ":latest"
        if name not in sizes:
            return web.json_response({"error": f"model '{body['model']}' not found, try pulling it first"}, status=404)
        if errors and name in errors:
            return web.json_response({"error": errors[name][1]}, status=errors[name][0])
        if body.get("keep_alive") == 0:
            leaving[name] = lag_polls
            return web.json_response({"model": name, "response": "", "done": True, "done_reason": "unload"})
        loaded[name] = sizes[name]
        return web.json_response({"model": name, "response": "", "done": True, "done_reason": "load"})

    app = web.Application()
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/generate", generate)
    return app


def fake_llama_swap(rec: Recorder, running: dict[str, str], *, legacy: bool = False,
                    on_load: Callable[[], None] | None = None) -> web.Application:
    """/running lists ``running`` (model -> state); /upstream/{model}/health swaps it in (one model at a
    time; ``on_load`` then runs); /api/models/unload/{model} stops it, or, when ``legacy``, only GET /unload
    stops everything."""

    async def list_running(request: web.Request) -> web.Response:
        return web.json_response({"running": [{"model": m, "state": s, "cmd": "llama-server", "proxy": "", "ttl": 0,
                                               "name": "", "description": ""} for m, s in running.items()]})

    async def upstream(request: web.Request) -> web.Response:
        await rec.body(request)
        running.clear()
        running[request.match_info["model"]] = "ready"
        if on_load is not None:
            on_load()
        return web.json_response({"status": "ok"})

    async def unload(request: web.Request) -> web.Response:
        await rec.body(request)
        running.pop(request.match_info["model"], None)
        return web.Response(text="OK")

    async def unload_all(request: web.Request) -> web.Response:
        await rec.body(request)
        running.clear()
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/running", list_running)
    app.router.add_get("/upstream/{model}/health", upstream)
    if not legacy:
        app.router.add_post("/api/models/unload/{model}", unload)
    app.router.add_get("/unload", unload_all)
    return app


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def spec(id_: str, source: str, url: str, *, backend: str = "ollama", device: str = "cuda:0", **kw: Any) -> ModelSpec:
    return ModelSpec(id=id_, family="llm", backend=backend, source=source, device=device, memory_estimate_mb=64,
                     options={"url": url, **kw.pop("options", {})}, **kw)


@pytest.fixture
async def session() -> AsyncIterator[Any]:
    s = new_session()
    yield s
    await s.close()


# Ollama --------------------------------------------------------------------------------------------


async def test_ollama_residency_is_api_ps_and_size_vram_is_the_charge(session: Any) -> None:
    rec = Recorder()
    server = await serve(fake_ollama(rec, {}, {"llama3.1:8b": 4000 * MiB, "phi3:latest": 2000 * MiB}))
    url = str(server.make_url(""))
    try:
        client = OllamaClient(url, [spec("llama", "llama3.1:8b", url), spec("phi", "phi3", url, device="cpu"),
                                    spec("qwen", "qwen2:7b", url)], session)
        rows = {r.id: r for r in (await client.models()).data}
        assert rows["llama"].state == "ready" and rows["llama"].peak_memory_bytes == 4000 * MiB
        # a name without a tag runs as :latest; on the CPU the charge is its whole size
        assert rows["phi"].state == "ready" and rows["phi"].peak_memory_bytes == 2100 * MiB
        assert rows["qwen"].state == "unloaded" and rows["qwen"].peak_memory_bytes is None
        assert all(isinstance(r, ModelRow) and r.family == "llm" for r in rows.values())
    finally:
        await server.close()


async def test_ollama_load_sends_no_prompt_and_a_long_keep_alive_and_answers_size_vram(session: Any) -> None:
    rec = Recorder()
    server = await serve(fake_ollama(rec, {"llama3.1:8b": 4000 * MiB, "phi3:latest": 1000 * MiB}, {}))
    url = str(server.make_url(""))
    try:
        client = OllamaClient(url, [spec("llama", "llama3.1:8b", url), spec("phi", "phi3", url, ttl_s=90)], session)
        row = await client.load("llama", timeout_s=10)
        assert row.state == "ready" and row.peak_memory_bytes == 4000 * MiB and row.device == "cuda:0"
        assert ("POST", "/api/generate", {"model": "llama3.1:8b", "keep_alive": -1, "stream": False}) in rec.calls
        await client.load("phi", timeout_s=10)  # the catalog's ttl_s is Ollama's keep_alive
        assert ("POST", "/api/generate", {"model": "phi3", "keep_alive": 90, "stream": False}) in rec.calls
        generate_calls = sum(c[1] == "/api/generate" for c in rec.calls)
        await client.load("llama", timeout_s=10)  # already resident: nothing asked of Ollama
        assert sum(c[1] == "/api/generate" for c in rec.calls) == generate_calls
    finally:
        await server.close()


async def test_ollama_unload_sends_keep_alive_0_and_answers_once_api_ps_shows_it_gone(session: Any) -> None:
    rec = Recorder()
    loaded = {"llama3.1:8b": 4000 * MiB}
    server = await serve(fake_ollama(rec, dict(loaded), loaded, lag_polls=3))
    url = str(server.make_url(""))
    try:
        client = OllamaClient(url, [spec("llama", "llama3.1:8b", url)], session, poll_s=0.01)
        reply = await client.unload("llama", drain=True, timeout_s=10)
        assert ("POST", "/api/generate", {"model": "llama3.1:8b", "keep_alive": 0, "stream": False}) in rec.calls
        assert reply.state == "unloaded" and reply.worker_stopped and reply.freed_bytes == 4000 * MiB
        assert loaded == {}  # answered only after /api/ps stopped listing it
    finally:
        await server.close()


async def test_ollama_that_never_lets_go_answers_unloading_after_the_timeout(session: Any) -> None:
    rec = Recorder()
    loaded = {"llama3.1:8b": 4000 * MiB}
    server = await serve(fake_ollama(rec, dict(loaded), loaded, lag_polls=10**6))
    url = str(server.make_url(""))
    try:
        client = OllamaClient(url, [spec("llama", "llama3.1:8b", url)], session, poll_s=0.01)
        reply = await client.unload("llama", drain=True, timeout_s=0.3)
        assert reply.state == "unloading" and not reply.worker_stopped and reply.freed_bytes == 0
    finally:
        await server.close()


async def test_ollama_errors_keep_their_status_and_ollamas_message(session: Any) -> None:
    server = await serve(fake_ollama(Recorder(), {}, {}))
    url = str(server.make_url(""))
    try:
        client = OllamaClient(url, [spec("ghost", "ghost:1b", url)], session)
        with pytest.raises(UpstreamEnvelope) as e:
            await client.load("ghost", timeout_s=10)
        assert e.value.status == 404 and "model 'ghost:1b' not found" in e.value.message
        assert e.value.src == client.name and client.name.startswith("ollama@127.0.0.1:")
    finally:
        await server.close()


async def test_a_load_that_ran_out_of_memory_at_the_server_is_out_of_memory_for_the_coordinator(session: Any) -> None:
    errors = {"big:70b": (500, "llama runner process has terminated: cudaMalloc failed: out of memory"),
              "odd:1b": (500, "llama runner process has terminated: exit status 2")}
    server = await serve(fake_ollama(Recorder(), {"big:70b": 1, "odd:1b": 1}, {}, errors=errors))
    url = str(server.make_url(""))
    try:
        client = OllamaClient(url, [spec("big", "big:70b", url), spec("odd", "odd:1b", url)], session)
        with pytest.raises(UpstreamEnvelope) as e:
            await client.load("big", timeout_s=10)
        assert e.value.status == 500 and e.value.code == "out_of_memory" and "cudaMalloc" in e.value.message
        with pytest.raises(UpstreamEnvelope) as e:
            await client.load("odd", timeout_s=10)
        assert e.value.status == 500 and e.value.code == "upstream_error"
    finally:
        await server.close()


async def test_an_unreachable_server_is_service_unreachable_at_once(session: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens
    for client in (OllamaClient(url, [spec("llama", "llama3.1:8b", url)], session),
                   LlamaSwapClient(url, [spec("q", "qwen", url, backend="llama-swap")], session)):
        t0 = time.monotonic()
        for call in (client.models(), client.load(next(iter(client.specs)), timeout_s=1800),
                     client.unload(next(iter(client.specs)), timeout_s=1800)):
            with pytest.raises(ServiceUnreachable, match="not reachable"):
                await call
        assert time.monotonic() - t0 < 30  # a backstop against a hang, not a speed target


# llama-swap ----------------------------------------------------------------------------------------


async def test_llama_swap_residency_load_and_unload(session: Any) -> None:
    rec = Recorder()
    running = {"qwen-vl": "starting"}
    server = await serve(fake_llama_swap(rec, running))
    url = str(server.make_url(""))
    try:
        client = LlamaSwapClient(url, [spec("vision", "qwen-vl", url, backend="llama-swap"),
                                       spec("chat", "llama-8b", url, backend="llama-swap")], session)
        rows = {r.id: r for r in (await client.models()).data}
        assert rows["vision"].state == "loading" and rows["chat"].state == "unloaded"  # llama-swap's "starting"
        row = await client.load("chat", timeout_s=10)
        assert ("GET", "/upstream/llama-8b/health", None) in rec.calls
        assert row.state == "ready" and row.peak_memory_bytes is None  # llama-swap gives no figure
        assert running == {"llama-8b": "ready"}
        reply = await client.unload("chat", timeout_s=10)
        assert ("POST", "/api/models/unload/llama-8b", None) in rec.calls
        assert reply.state == "unloaded" and reply.worker_stopped and running == {}
    finally:
        await server.close()


async def test_an_older_llama_swap_is_unloaded_with_get_unload(session: Any) -> None:
    rec = Recorder()
    running = {"llama-8b": "ready"}
    server = await serve(fake_llama_swap(rec, running, legacy=True))
    url = str(server.make_url(""))
    try:
        client = LlamaSwapClient(url, [spec("chat", "llama-8b", url, backend="llama-swap")], session)
        reply = await client.unload("chat", timeout_s=10)
        assert [c[:2] for c in rec.calls] == [("GET", "/unload")] and reply.state == "unloaded" and running == {}
    finally:
        await server.close()


# http ----------------------------------------------------------------------------------------------


async def test_an_http_tenant_uses_the_urls_of_its_options(session: Any) -> None:
    rec = Recorder()
    held: dict[str, int] = {}

    async def residency(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": m, "memory_bytes": b} for m, b in held.items()]})

    async def load(request: web.Request) -> web.Response:
        held[(await rec.body(request))["model"]] = 300 * MiB
        return web.json_response({})

    async def evict(request: web.Request) -> web.Response:
        body = await rec.body(request)
        assert request.match_info["model"] == body["model"]
        held.pop(body["model"])
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/loaded", residency)
    app.router.add_post("/warm", load)
    app.router.add_post("/evict/{model}", evict)
    server = await serve(app)
    base = str(server.make_url("")).rstrip("/")
    try:
        client = HttpTenantClient(base, [spec("m", "mistral", base, backend="http", options={
            "residency_url": f"{base}/loaded", "unload_url": f"{base}/evict/{{model}}", "load_url": f"{base}/warm"})],
            session)
        assert (await client.models()).data[0].state == "unloaded"
        row = await client.load("m", timeout_s=10)
        assert row.state == "ready" and row.peak_memory_bytes == 300 * MiB
        reply = await client.unload("m", timeout_s=10)
        assert reply.state == "unloaded" and reply.freed_bytes == 300 * MiB
        assert [c[:2] for c in rec.calls] == [("POST", "/warm"), ("POST", "/evict/mistral")]
    finally:
        await server.close()


# the coordinator's effects -------------------------------------------------------------------------


class StepMeter:
    """A GPU meter whose used bytes the test sets."""

    kind = "nvml"

    def __init__(self) -> None:
        self.used = 1000 * MiB

    def device(self) -> DeviceMemory:
        return DeviceMemory("cuda:0", 24000 * MiB, self.used)

    def process_bytes(self, pid: int) -> int:
        return 0


async def test_effects_choose_the_client_by_model_and_reconcile_llm_through_every_server(session: Any, tmp_path: Path) -> None:
    o_loaded = {"llama3.1:8b": 4000 * MiB}
    s_running: dict[str, str] = {}
    meter = StepMeter()

    def swapped_in() -> None:  # its process takes its memory, as the GPU's meter sees it
        meter.used += 1500 * MiB

    def released(freed: int) -> None:
        meter.used -= freed

    ollama = await serve(fake_ollama(Recorder(), dict(o_loaded), o_loaded, lag_polls=2, on_release=released))
    swap = await serve(fake_llama_swap(Recorder(), s_running, on_load=swapped_in))
    o_url, s_url = str(ollama.make_url("")).rstrip("/"), str(swap.make_url("")).rstrip("/")
    (tmp_path / "c.yaml").write_text(f"""\
models:
  - {{id: llama, family: llm, backend: ollama, source: "llama3.1:8b", device: "cuda:0", options: {{url: "{o_url}"}}}}
  - {{id: vision, family: llm, backend: llama-swap, source: qwen-vl, device: "cuda:0", memory_estimate_mb: 900,
      options: {{url: "{s_url}"}}}}
""")
    catalog = load_catalog(tmp_path / "c.yaml")
    tenants = Tenants.build(catalog, session, connect_timeout_s=2.0)
    effects = HttpEffects({}, {"cuda:0": meter}, load_timeout_s=30, release_timeout_s=2, tenants=tenants)
    try:
        assert {c.name.split("@")[0] for c in tenants.clients} == {"ollama", "llama-swap"}
        rows = {r.id: r.state for r in await effects.models("llm")}
        assert rows == {"llama": "ready", "vision": "unloaded"}
        # Ollama's own figure; llama-swap gives none: the load is charged what the meter saw it take
        assert (await effects.load(catalog.get("llama"))).peak_memory_bytes == 4000 * MiB
        loaded = await effects.load(catalog.get("vision"))
        assert loaded.peak_memory_bytes == 1500 * MiB and loaded.device == "cuda:0"
        # Ollama's model unloaded through its API, its release verified by the meter
        release = await effects.unload(catalog.get("llama"), 4000 * MiB)
        assert release.unloaded and release.worker_stopped and release.verified, release.detail
        assert release.returned_bytes == 4000 * MiB
        await swap.close()  # one server down, the other holds nothing: the error, not "every worker is gone"
        with pytest.raises(ServiceUnreachable):
            await effects.models("llm")
        o_loaded["llama3.1:8b"] = 4000 * MiB  # one server down, the other holds a model: its rows
        rows = {r.id: r.state for r in await effects.models("llm")}
        assert rows == {"llama": "ready"}
        await ollama.close()  # every server down: the error, so the coordinator knows it read nothing
        with pytest.raises(ServiceUnreachable):
            await effects.models("llm")
    finally:
        await ollama.close()
        await swap.close()
