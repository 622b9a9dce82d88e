"""A stand-in for a family service process: answers the model host API with canned JSON, as fast as
uvicorn (uvloop, httptools) can, optionally after a fixed delay per inference request.

It is the upstream for ``bench/gateway_overhead.py``, so that a benchmark measures the gateway's hop
and not a model. What it answers:

    GET  /health/live, /health/ready       200 {"status": "ok", ...}
    GET  /stats                            200 {"most_in_flight": n}: the most inference requests it held at once
                                               since the last /stats (counted only with a delay)
    GET  /v1/models                        200 the models loaded so far (``modelhost.contract.ModelsReply``)
    POST /v1/models/{name}/load            200 a ``ModelRow`` in state ready (the model is listed from then on)
    POST /v1/models/{name}/unload          200 an ``UnloadReply`` (the model is no longer listed)
    POST any other path (/v1/captions ...) 200 a caption shaped like modelhost.families.caption.CaptionResponse,
                                               after ``delay_ms`` (asyncio.sleep; 0 = no sleep)
    anything else                          404 an error envelope

Request bodies are read to the end and ignored. Run it as a process:

    python tests/doubles/echo_service.py --port 8199 [--delay-ms 20] [--model bench-caption]

(``ECHO_SERVICE_DELAY_MS`` and ``ECHO_SERVICE_MODEL`` set the same as the flags.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any, Awaitable, Callable

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_RID = b"x-request-id"
_JSON = (b"content-type", b"application/json")


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def create_app(*, delay_ms: float = 0.0, model: str = "bench-caption"):  # noqa: ANN201 - an ASGI callable
    """The raw ASGI app. ``delay_ms`` is slept on every inference POST; ``model`` is named in captions."""
    delay_s = delay_ms / 1000.0
    caption = _encode({
        "object": "image.caption", "model": model, "caption": "a photo of a cat sitting on a table", "tokens": 9,
        "width": 8, "height": 8, "timings": {"decode_ms": 0.05, "inference_ms": delay_ms},
    })
    loaded: dict[str, dict[str, Any]] = {}  # model id -> its ModelRow, as GET /v1/models lists it
    flight = {"now": 0, "most": 0}  # inference requests sleeping now, and the most at once since /stats

    def row(name: str) -> dict[str, Any]:
        return {"id": name, "family": "caption", "backend": "echo", "state": "ready", "device_requested": "cpu",
                "device": "cpu", "memory_bytes": 0, "peak_memory_bytes": 0, "memory_estimate_bytes": 0,
                "load_s": 0.0, "warmup_s": 0.0}

    def models() -> bytes:
        return _encode({"object": "list", "family": "caption", "service": "echo-service", "worker_pid": os.getpid(),
                        "meter": "host", "data": list(loaded.values())})

    not_found = _encode({"src": "echo-service", "request_id": None, "error": {
        "type": "not_found_error", "code": "not_found", "message": "no such route", "param": None}})

    async def lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the whole body, as a real service must before it answers
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        method, path = scope["method"], scope["path"]
        status, body = 200, caption
        if method == "GET":
            if path in ("/health/live", "/health/ready"):
                body = _encode({"status": "ok", "family": "caption", "models": len(loaded), "worker_pid": os.getpid()})
            elif path == "/v1/models":
                body = models()
            elif path == "/stats":
                body = _encode({"most_in_flight": flight["most"]})
                flight["most"] = flight["now"]
            else:
                status, body = 404, not_found
        elif method == "POST":
            parts = path.strip("/").split("/")
            if len(parts) == 4 and parts[:2] == ["v1", "models"] and parts[3] in ("load", "unload"):
                name = parts[2]
                if parts[3] == "load":
                    body = _encode(loaded.setdefault(name, row(name)))
                else:
                    loaded.pop(name, None)
                    body = _encode({"model": name, "state": "unloaded", "freed_bytes": 0, "unload_s": 0.0,
                                    "worker_stopped": not loaded})
            elif delay_s > 0:
                flight["now"] += 1
                flight["most"] = max(flight["most"], flight["now"])
                try:
                    await asyncio.sleep(delay_s)
                finally:
                    flight["now"] -= 1
        else:
            status, body = 404, not_found
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        for name, value in scope["headers"]:
            if name == _RID:
                headers.append((_RID, value))
                break
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Canned model host API for benchmarks and process tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=float(os.environ.get("ECHO_SERVICE_DELAY_MS", "0")),
                        help="sleep this long on every inference POST (default: 0)")
    parser.add_argument("--model", default=os.environ.get("ECHO_SERVICE_MODEL", "bench-caption"),
                        help="model id named in the canned caption (default: bench-caption)")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(delay_ms=args.delay_ms, model=args.model), host=args.host, port=args.port,
                loop="uvloop", http="httptools", lifespan="on", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
