"""A stand-in for an Ollama server: a real process that speaks Ollama's HTTP API, whose loaded models
really hold memory (one runner process each, ``llm_runner.py``, as ``ollama runner`` does), so a rehearsal's
fake NVML sees them on the GPU.

    python -m tests.doubles.ollama_server --port 11434 \
        --models '{"llama3.1:8b": {"bytes": 50000000, "load_s": 0.2}}' --resident llama3.1:8b

What it answers, in Ollama's shapes (docs/api.md, docs/openai.md of ollama/ollama):

- ``GET /`` ("Ollama is running"), ``GET /api/version``, ``GET /api/tags`` (every model it has), ``GET /api/ps``
  (the loaded ones: ``name``, ``model``, ``size``, ``size_vram``, ``expires_at`` ...);
- ``POST /api/generate`` and ``POST /api/chat``: with no prompt (no messages) they load the model
  (``done_reason: "load"``), and with ``keep_alive: 0`` unload it (``done_reason: "unload"``; answered at
  once, the release runs after, as Ollama's scheduler does); with a prompt they load it if needed and
  answer, streaming NDJSON unless ``stream: false``. ``keep_alive`` (seconds, or "5m", negative: forever)
  sets when an idle model unloads itself; ``--keep-alive`` is the default (``OLLAMA_KEEP_ALIVE``);
- ``POST /api/embed``; the OpenAI-compatible ``POST /v1/chat/completions``, ``/v1/completions`` (SSE
  ``data: {...}`` chunks then ``data: [DONE]`` when ``stream`` is true), ``/v1/embeddings``, ``GET /v1/models``.

A name without a tag means ``:latest``, as in Ollama. Unknown models are 404 with Ollama's message. Test-only
routes and fault knobs: ``llm_stand_in.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import time
from datetime import datetime, timezone

from aiohttp import web

from tests.doubles.llm_stand_in import (ModelConf, OpenAIShapes, Residency, add_test_routes, embedding,
                                        last_user_text, openai_answer, parse_models, recording, reply_tokens, serve,
                                        stream_tokens)

VERSION = "0.12.6"
FOREVER_S = 292 * 365 * 86400  # what a negative keep_alive leaves in expires_at (Go's longest duration)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def normalize(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def parse_keep_alive(value: object, default_s: float | None) -> float | None:
    """Seconds (None: forever) from Ollama's ``keep_alive``: a number of seconds or a duration string."""
    if value is None:
        return default_s
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        parts = re.findall(r"(-?[\d.]+)(ms|s|m|h)?", text)
        if not parts or "".join(n + (u or "") for n, u in parts) != text:
            raise ValueError(f"time: invalid duration {text!r}")
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    return None if seconds < 0 else seconds


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(min(t, 32503680000), timezone.utc).isoformat().replace("+00:00", "Z")


def now() -> str:
    return rfc3339(time.time())


def describe(conf: ModelConf) -> dict:
    family = conf.name.split(":")[0].rstrip("0123456789.") or "llama"
    return {"name": conf.name, "model": conf.name, "size": conf.bytes,
            "digest": hashlib.sha256(conf.name.encode()).hexdigest(),
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "8.0B", "quantization_level": "Q4_K_M"}}


class Ollama:
    def __init__(self, models: dict[str, ModelConf], keep_alive_s: float | None, faults: dict) -> None:
        self.models = {normalize(n): ModelConf(normalize(n), c.bytes, c.load_s, c.unload_s) for n, c in models.items()}
        self.keep_alive_s = keep_alive_s
        self.faults = faults
        self.residency = Residency(self.models, faults)
        self.shapes = OpenAIShapes("fp_ollama")

    def _not_found(self, name: str, openai: bool = False) -> web.Response:
        message = f'model "{name}" not found, try pulling it first'
        if openai:
            return web.json_response({"error": {"message": message, "type": "api_error", "param": None, "code": None}},
                                     status=404)
        return web.json_response({"error": message}, status=404)

    async def _ready(self, name: str, keep_alive: object) -> None:
        runner = await self.residency.load(name)
        self.residency.expire_after(runner, parse_keep_alive(keep_alive, self.keep_alive_s))

    # native API -------------------------------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{**describe(c), "modified_at": now()} for c in self.models.values()]})

    async def ps(self, request: web.Request) -> web.Response:
        out = []
        for r in self.residency.resident():
            expires = r.expires_at if r.expires_at is not None else time.time() + FOREVER_S
            out.append({**describe(r.conf), "expires_at": rfc3339(expires), "size_vram": r.conf.bytes,
                        "context_length": 4096})
        return web.json_response({"models": out})

    async def generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, "generate")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native(request, "chat")

    async def _native(self, request: web.Request, kind: str) -> web.StreamResponse:
        body = await request.json()
        asked = str(body.get("model", ""))
        name = normalize(asked)
        if name not in self.models:
            return self._not_found(asked)
        try:
            keep = parse_keep_alive(body.get("keep_alive"), self.keep_alive_s)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        prompt = str(body.get("prompt", "")) if kind == "generate" else last_user_text(body.get("messages", []))
        empty = not body.get("prompt") if kind == "generate" else not body.get("messages")
        head = {"model": asked, "created_at": now()}
        blank = {"response": ""} if kind == "generate" else {"message": {"role": "assistant", "content": ""}}
        if empty and keep == 0:
            asyncio.ensure_future(self.residency.unload(name))  # Ollama expires the runner and answers at once
            return web.json_response({**head, **blank, "done": True, "done_reason": "unload"})
        t0 = time.monotonic()
        await self._ready(name, body.get("keep_alive"))
        load_ns = int((time.monotonic() - t0) * 1e9)
        if empty:
            return web.json_response({**head, **blank, "done": True, "done_reason": "load"})
        tokens = reply_tokens(prompt, (body.get("options") or {}).get("num_predict"))

        def part(token: str) -> dict:
            piece = {"response": token} if kind == "generate" else {"message": {"role": "assistant", "content": token}}
            return {"model": asked, "created_at": now(), **piece, "done": False}

        final = {**head, **blank, "done": True, "done_reason": "stop", "total_duration": load_ns,
                 "load_duration": load_ns, "prompt_eval_count": len(prompt.split()), "prompt_eval_duration": 1000,
                 "eval_count": len(tokens), "eval_duration": 1000}
        if kind == "generate":
            final["context"] = list(range(len(tokens)))
        if body.get("stream") is False:
            async for _ in stream_tokens(self.faults, tokens):
                pass
            key = "response" if kind == "generate" else "message"
            final[key] = "".join(tokens) if kind == "generate" else {"role": "assistant", "content": "".join(tokens)}
            return web.json_response(final)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        async for t in stream_tokens(self.faults, tokens):
            await resp.write((json.dumps(part(t)) + "\n").encode())
        await resp.write((json.dumps(final) + "\n").encode())
        await resp.write_eof()
        return resp

    async def embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        asked = str(body.get("model", ""))
        if normalize(asked) not in self.models:
            return self._not_found(asked)
        await self._ready(normalize(asked), body.get("keep_alive"))
        inputs = body.get("input") if isinstance(body.get("input"), list) else [str(body.get("input", ""))]
        return web.json_response({"model": asked, "embeddings": [embedding(t) for t in inputs],
                                  "total_duration": 1000, "load_duration": 0,
                                  "prompt_eval_count": sum(len(t.split()) for t in inputs)})

    # OpenAI-compatible API ----------------------------------------------------------------------------------

    def _openai(self, route: str):  # noqa: ANN202 - an aiohttp handler
        async def handler(request: web.Request) -> web.StreamResponse:
            body = await request.json()
            asked = str(body.get("model", ""))
            if normalize(asked) not in self.models:
                return self._not_found(asked, openai=True)
            await self._ready(normalize(asked), None)
            return await openai_answer(request, self.shapes, self.faults, route, asked, body)
        return handler

    async def v1_models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": n, "object": "model", "created": int(time.time()), "owned_by": "library"} for n in self.models]})


def create_app(models: dict[str, ModelConf], resident: list[str], keep_alive_s: float | None) -> web.Application:
    calls: list[dict] = []
    faults: dict = {}
    ollama = Ollama(models, keep_alive_s, faults)
    app = web.Application(middlewares=[recording(calls)])
    app.router.add_get("/", ollama.root)
    app.router.add_get("/api/version", ollama.version)
    app.router.add_get("/api/tags", ollama.tags)
    app.router.add_get("/api/ps", ollama.ps)
    app.router.add_post("/api/generate", ollama.generate)
    app.router.add_post("/api/chat", ollama.chat)
    app.router.add_post("/api/embed", ollama.embed)
    app.router.add_post("/v1/chat/completions", ollama._openai("chat"))
    app.router.add_post("/v1/completions", ollama._openai("completions"))
    app.router.add_post("/v1/embeddings", ollama._openai("embeddings"))
    app.router.add_get("/v1/models", ollama.v1_models)
    add_test_routes(app, calls, faults)

    async def preload(app: web.Application) -> None:
        for name in resident:  # loaded before the server answers, as a model a user ran earlier
            await ollama._ready(normalize(name), -1)

    async def cleanup(app: web.Application) -> None:
        await ollama.residency.close()

    app.on_startup.append(preload)
    app.on_cleanup.append(cleanup)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for an Ollama server (tests only).")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", required=True, help='JSON: {"name:tag": {"bytes": N, "load_s": s, "unload_s": s}}')
    parser.add_argument("--resident", action="append", default=[], help="a model loaded at start (keep_alive forever)")
    parser.add_argument("--keep-alive", default="5m", help="the default keep_alive (OLLAMA_KEEP_ALIVE)")
    args = parser.parse_args(argv)
    serve(create_app(parse_models(args.models), args.resident, parse_keep_alive(args.keep_alive, None)), args.port)


if __name__ == "__main__":
    main()
