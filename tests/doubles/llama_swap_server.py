"""A stand-in for llama-swap: a real process that speaks llama-swap's HTTP API and swaps its models, each
served by a process of its own that really holds the model's memory (``llm_runner.py``, in place of
``llama-server``), so a rehearsal's fake NVML sees them on the GPU.

    python -m tests.doubles.llama_swap_server --port 8080 \
        --models '{"qwen2.5-vl": {"bytes": 50000000, "load_s": 0.3}}' --resident qwen2.5-vl

What it answers, in llama-swap's shapes (``internal/server/server.go``, ``api.go``, ``apigroup.go`` of
mostlygeek/llama-swap):

- ``GET /health`` ("OK"); ``GET /running``: ``{"running": [{"model", "state", "cmd", "proxy", "ttl", "name",
  "description"}]}``, every model whose process is not stopped (``state``: starting, ready, stopping);
- ``POST /api/models/unload/{model}``: stops that model's process and answers "OK" when it has stopped
  (404 envelope for a model it does not have); ``POST /api/models/unload`` (``{"msg": "ok"}``) and the older
  ``GET /unload`` ("OK") stop them all (``--no-api-unload``: an older version, ``GET /unload`` alone);
- ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` for the model the body names: the
  models form one swap group, so a request for a model that is not running stops the others, starts it,
  then answers (the upstream's OpenAI shapes; SSE ``data: {...}`` then ``data: [DONE]`` when streaming);
  ``GET /v1/models`` lists every model with its ``status``;
- ``/upstream/{model}/{path}``: the passthrough to that model's own server, started (swapped in) first;
  the stand-in's server answers ``health`` (``{"status": "ok"}``, as llama.cpp's) and the OpenAI routes.

Errors are llama-swap's envelope ``{"src": "llama-swap", "error": {"message", "type", "param", "code"}}``.
Test-only routes and fault knobs: ``llm_stand_in.py``.
"""

from __future__ import annotations

import argparse
import time

from aiohttp import web

from tests.doubles.llm_stand_in import (ModelConf, OpenAIShapes, Residency, add_test_routes, openai_answer,
                                        parse_models, recording, serve)

_ERROR_KINDS = {400: ("invalid_request_error", "bad_request"), 404: ("invalid_request_error", "not_found"),
                503: ("server_error", "service_unavailable")}


def error(status: int, message: str) -> web.Response:
    kind, code = _ERROR_KINDS.get(status, ("server_error", "internal_error"))
    return web.json_response({"src": "llama-swap", "error": {"message": message, "type": kind, "param": None,
                                                             "code": code}}, status=status)


class LlamaSwap:
    def __init__(self, models: dict[str, ModelConf], faults: dict) -> None:
        self.models = models
        self.faults = faults
        self.residency = Residency(models, faults)
        self.shapes = OpenAIShapes("b6800-stand-in")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def running(self, request: web.Request) -> web.Response:
        out = [{"model": r.conf.name, "state": r.state, "cmd": f"llama-server --model {r.conf.name}.gguf",
                "proxy": "http://127.0.0.1:${PORT}", "ttl": 0, "name": "", "description": ""}
               for r in sorted(self.residency.resident(), key=lambda r: r.conf.name)]
        return web.json_response({"running": out})

    async def unload_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"].lstrip("/")
        if name not in self.models:
            return error(404, "model not found")
        await self.residency.unload(name)
        return web.Response(text="OK")

    async def _unload_all(self) -> None:
        for name in [r.conf.name for r in self.residency.resident()]:
            await self.residency.unload(name)

    async def api_unload_all(self, request: web.Request) -> web.Response:
        await self._unload_all()
        return web.json_response({"msg": "ok"})

    async def legacy_unload(self, request: web.Request) -> web.Response:
        await self._unload_all()
        return web.Response(text="OK")

    async def list_models(self, request: web.Request) -> web.Response:
        loaded = {r.conf.name for r in self.residency.resident()}
        data = [{"id": n, "object": "model", "created": int(time.time()), "owned_by": "llama-swap", "name": "",
                 "description": "", "status": {"value": "loaded" if n in loaded else "unloaded"},
                 "meta": {"llamaswap": {"type": "model"}}} for n in sorted(self.models)]
        return web.json_response({"object": "list", "data": data})

    def proxied(self, route: str):  # noqa: ANN202 - an aiohttp handler
        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                body = await request.json()
            except ValueError:
                return error(400, "invalid JSON body")
            name = str(body.get("model", ""))
            if not name:
                return error(404, "no model id could be identified")
            if name not in self.models:
                return error(404, "no router for requested model")
            await self.residency.load(name, evict_others=True)  # one swap group: the others stop first
            return await openai_answer(request, self.shapes, self.faults, route, name, body)
        return handler


    async def upstream(self, request: web.Request) -> web.StreamResponse:
        """``/upstream/{model}/{path}``: llama-swap's passthrough to the model's own server, which it starts
        first (swapping the others out); the stand-in's "llama-server" answers ``/health`` and the OpenAI routes."""
        name, path = request.match_info["model"], request.match_info["path"]
        if name not in self.models:
            return error(404, "model not found")
        await self.residency.load(name, evict_others=True)
        if path == "health":
            return web.json_response({"status": "ok"})
        route = {"v1/chat/completions": "chat", "v1/completions": "completions", "v1/embeddings": "embeddings"}.get(path)
        if route is None or request.method != "POST":
            return web.json_response({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
                                     status=404)
        return await openai_answer(request, self.shapes, self.faults, route, name, await request.json())


def create_app(models: dict[str, ModelConf], resident: list[str], api_unload: bool = True) -> web.Application:
    calls: list[dict] = []
    faults: dict = {}
    swap = LlamaSwap(models, faults)
    app = web.Application(middlewares=[recording(calls)])
    app.router.add_get("/health", swap.health)
    app.router.add_get("/running", swap.running)
    app.router.add_get("/unload", swap.legacy_unload)
    if api_unload:  # older versions have GET /unload alone
        app.router.add_post("/api/models/unload", swap.api_unload_all)
        app.router.add_post("/api/models/unload/{model:.+}", swap.unload_model)
    app.router.add_get("/v1/models", swap.list_models)
    app.router.add_get("/models", swap.list_models)
    app.router.add_post("/v1/chat/completions", swap.proxied("chat"))
    app.router.add_post("/v1/completions", swap.proxied("completions"))
    app.router.add_post("/v1/embeddings", swap.proxied("embeddings"))
    app.router.add_route("*", "/upstream/{model}/{path:.*}", swap.upstream)
    add_test_routes(app, calls, faults)

    async def preload(app: web.Application) -> None:
        for name in resident:  # llama-swap's hooks.on_startup.preload
            await swap.residency.load(name, evict_others=True)

    async def cleanup(app: web.Application) -> None:
        await swap.residency.close()

    app.on_startup.append(preload)
    app.on_cleanup.append(cleanup)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for llama-swap (tests only).")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--models", required=True, help='JSON: {"id": {"bytes": N, "load_s": s, "unload_s": s}}')
    parser.add_argument("--resident", action="append", default=[], help="a model started with the server")
    parser.add_argument("--no-api-unload", action="store_true", help="an older llama-swap: no POST /api/models/unload")
    args = parser.parse_args(argv)
    serve(create_app(parse_models(args.models), args.resident, api_unload=not args.no_api_unload), args.port)


if __name__ == "__main__":
    main()
