"""What the Ollama and llama-swap stand-ins share: their models' residency (one runner process per loaded
model, ``llm_runner.py``), the record of every call they receive, the test-only routes, and the text and
OpenAI-shaped answers of a model that is not a model.

Test-only routes (no real server has them; their names start with ``/_``):

- ``GET /_calls``: every request received, in order: ``{"calls": [{"method", "path", "query", "body", "t"}]}``
  (``body`` parsed as JSON where it is JSON, else text; ``t`` is ``time.time()``);
- ``POST /_faults``: change a fault knob while running: ``{"unload_s": 5}`` (every model's release takes
  that long from now on), ``{"ignore_unload": true}`` (an unload call is answered as done and the model
  stays: a server that lies), ``{"token_s": 0.2}`` (each streamed token takes that long).

A server that restarts is stopped and started again by the test (its runners end with it: their standard
input closes); one that is unreachable is simply not started.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger("llm-stand-in")
_ids = itertools.count(1)


@dataclass
class ModelConf:
    name: str
    bytes: int
    load_s: float = 0.0
    unload_s: float = 0.0


def parse_models(text: str) -> dict[str, ModelConf]:
    """``{"llama3.1:8b": {"bytes": 50000000, "load_s": 0.3, "unload_s": 0.1}, ...}``."""
    return {name: ModelConf(name, int(c["bytes"]), float(c.get("load_s", 0)), float(c.get("unload_s", 0)))
            for name, c in json.loads(text).items()}


@dataclass
class Runner:
    conf: ModelConf
    proc: asyncio.subprocess.Process
    state: str = "starting"  # starting -> ready -> stopping
    loaded_at: float = field(default_factory=time.time)
    expires_at: float | None = None  # time.time() when an idle model unloads itself; None: never
    timer: asyncio.TimerHandle | None = None


class Residency:
    """Which models are loaded, each in a runner process holding its bytes. Loads and unloads are serial,
    as in both real servers (one scheduler goroutine in Ollama, one swap at a time in a llama-swap group)."""

    def __init__(self, models: dict[str, ModelConf], faults: dict) -> None:
        self.models = models
        self.faults = faults
        self.runners: dict[str, Runner] = {}
        self._lock = asyncio.Lock()

    def resident(self) -> list[Runner]:
        return list(self.runners.values())

    async def load(self, name: str, evict_others: bool = False) -> Runner:
        async with self._lock:
            if evict_others:
                for other in [n for n in self.runners if n != name]:
                    await self._stop(other)
            if name in self.runners:
                return self.runners[name]
            conf = self.models[name]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.doubles.llm_runner", "--bytes", str(conf.bytes), "--model", name,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
            runner = self.runners[name] = Runner(conf, proc)
            line = await proc.stdout.readline()
            if line.strip() != b"ready":
                del self.runners[name]
                raise RuntimeError(f"runner for {name} did not start (exit {await proc.wait()})")
            await asyncio.sleep(conf.load_s)
            runner.state = "ready"
            log.info("loaded %s (%d bytes, pid %d)", name, conf.bytes, proc.pid)
            return runner

    async def unload(self, name: str) -> bool:
        """Release ``name`` (False: it was not loaded). With the ``ignore_unload`` fault, say so and keep it."""
        if self.faults.get("ignore_unload"):
            return name in self.runners
        async with self._lock:
            return await self._stop(name)

    async def _stop(self, name: str) -> bool:
        runner = self.runners.get(name)
        if runner is None:
            return False
        runner.state = "stopping"
        if runner.timer is not None:
            runner.timer.cancel()
        await asyncio.sleep(float(self.faults.get("unload_s", runner.conf.unload_s)))
        runner.proc.stdin.close()
        await runner.proc.wait()
        del self.runners[name]
        log.info("unloaded %s", name)
        return True

    def expire_after(self, runner: Runner, keep_alive_s: float | None) -> None:
        """Unload ``runner`` when idle for ``keep_alive_s`` (None: keep it)."""
        if runner.timer is not None:
            runner.timer.cancel()
        runner.timer = None
        runner.expires_at = None
        if keep_alive_s is None:
            return
        runner.expires_at = time.time() + keep_alive_s
        name = runner.conf.name
        runner.timer = asyncio.get_running_loop().call_later(
            keep_alive_s, lambda: asyncio.ensure_future(self.unload(name)))

    async def close(self) -> None:
        for name in list(self.runners):
            runner = self.runners.pop(name)
            runner.proc.stdin.close()
            await runner.proc.wait()


# the record of calls and the test-only routes ---------------------------------------------------------------

def recording(calls: list[dict]) -> Callable:
    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):  # noqa: ANN202
        if not request.path.startswith("/_"):
            raw = await request.read()  # cached: the handler reads it again
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            calls.append({"method": request.method, "path": request.path, "query": dict(request.query),
                          "body": body, "t": time.time()})
        return await handler(request)
    return record


def add_test_routes(app: web.Application, calls: list[dict], faults: dict) -> None:
    async def get_calls(request: web.Request) -> web.Response:
        return web.json_response({"calls": calls})

    async def set_faults(request: web.Request) -> web.Response:
        faults.update(await request.json())
        return web.json_response(faults)

    app.router.add_get("/_calls", get_calls)
    app.router.add_post("/_faults", set_faults)


# what the "model" says -------------------------------------------------------------------------------------

def reply_tokens(prompt: str, n: int | None) -> list[str]:
    """A deterministic answer: a fixed opening, then the prompt's words; ``n`` tokens at most (default 8)."""
    words = ["The", "stand-in", "read:"] + (prompt.split() or ["nothing"])
    return [w if i == 0 else " " + w for i, w in enumerate(words[:n or 8])]


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages or []):
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts (text and images)
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if m.get("role") == "user" and content:
            return str(content)
    return ""


def embedding(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((b - 128) / 128, 4) for b in digest[:dims]]


def count_tokens(text: str) -> int:
    return len(text.split())


async def stream_tokens(faults: dict, tokens: list[str]):  # noqa: ANN201 - an async generator of str
    for t in tokens:
        await asyncio.sleep(float(faults.get("token_s", 0.01)))
        yield t


class OpenAIShapes:
    """The OpenAI-compatible bodies, as a server of one flavour writes them (``fingerprint``: Ollama writes
    ``fp_ollama``, llama-server its build)."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def _head(self, kind: str, model: str, rid: str) -> dict:
        return {"id": rid, "object": kind, "created": int(time.time()), "model": model,
                "system_fingerprint": self.fingerprint}

    @staticmethod
    def usage(prompt: str, tokens: list[str]) -> dict:
        return {"prompt_tokens": count_tokens(prompt), "completion_tokens": len(tokens),
                "total_tokens": count_tokens(prompt) + len(tokens)}

    def chat(self, model: str, prompt: str, tokens: list[str], rid: str) -> dict:
        return {**self._head("chat.completion", model, rid),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                             "finish_reason": "stop"}], "usage": self.usage(prompt, tokens)}

    def chat_chunk(self, model: str, content: str, finish: str | None, rid: str) -> dict:
        return {**self._head("chat.completion.chunk", model, rid),
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}]}

    def completion(self, model: str, prompt: str, tokens: list[str], rid: str) -> dict:
        return {**self._head("text_completion", model, rid),
                "choices": [{"text": "".join(tokens), "index": 0, "finish_reason": "stop"}],
                "usage": self.usage(prompt, tokens)}

    def completion_chunk(self, model: str, text: str, finish: str | None, rid: str) -> dict:
        return {**self._head("text_completion", model, rid),
                "choices": [{"text": text, "index": 0, "finish_reason": finish}]}

    @staticmethod
    def embeddings(model: str, inputs: list[str]) -> dict:
        return {"object": "list", "model": model,
                "data": [{"object": "embedding", "embedding": embedding(t), "index": i} for i, t in enumerate(inputs)],
                "usage": {"prompt_tokens": sum(map(count_tokens, inputs)), "total_tokens": sum(map(count_tokens, inputs))}}


async def openai_answer(request: web.Request, shapes: OpenAIShapes, faults: dict, route: str, model: str,
                        body: dict) -> web.StreamResponse:
    """Answer an OpenAI-compatible request for a loaded ``model``: ``route`` is chat, completions or embeddings."""
    if route == "embeddings":
        inputs = body.get("input")
        return web.json_response(shapes.embeddings(model, inputs if isinstance(inputs, list) else [str(inputs)]))
    prompt = last_user_text(body.get("messages", [])) if route == "chat" else str(body.get("prompt", ""))
    tokens = reply_tokens(prompt, body.get("max_tokens"))
    rid = f"{'chatcmpl' if route == 'chat' else 'cmpl'}-{next(_ids)}"
    if not body.get("stream"):
        async for _ in stream_tokens(faults, tokens):  # the model's time, as streamed
            pass
        make = shapes.chat if route == "chat" else shapes.completion
        return web.json_response(make(model, prompt, tokens, rid))
    chunk = shapes.chat_chunk if route == "chat" else shapes.completion_chunk
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    async for t in stream_tokens(faults, tokens):
        await resp.write(f"data: {json.dumps(chunk(model, t, None, rid))}\n\n".encode())
    await resp.write(f"data: {json.dumps(chunk(model, '', 'stop', rid))}\n\n".encode())
    if (body.get("stream_options") or {}).get("include_usage"):
        final = {**chunk(model, "", None, rid), "choices": [], "usage": shapes.usage(prompt, tokens)}
        await resp.write(f"data: {json.dumps(final)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def serve(app: web.Application, port: int) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)
