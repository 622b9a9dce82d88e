"""modelhost.wire.BodyTimeoutMiddleware against an ASGI app that reads its whole body: a body that stops is
408 in the envelope after ``idle_s``; a slow body that keeps coming is never cut, however long it takes."""

from __future__ import annotations

import asyncio
import json

import pytest

from modelhost.wire import BodyTimeoutMiddleware

pytestmark = pytest.mark.unit


async def reading_app(scope, receive, send) -> None:  # noqa: ANN001
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RuntimeError("client gone")  # what a framework does on a disconnect mid-body
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def scope(headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "method": "POST", "path": "/x", "headers": headers}


async def run(chunks: list[tuple[float, bytes, bool]], idle_s: float) -> list[dict]:
    """Feed ``chunks`` (delay before it, bytes, more_body) and then nothing; return what was sent."""
    queue: asyncio.Queue[dict] = asyncio.Queue()

    async def feed() -> None:
        for delay, data, more in chunks:
            await asyncio.sleep(delay)
            await queue.put({"type": "http.request", "body": data, "more_body": more})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    feeder = asyncio.create_task(feed())
    app = BodyTimeoutMiddleware(reading_app, idle_s=idle_s, src="test-svc")
    await asyncio.wait_for(app(scope([(b"content-length", b"1000")]), queue.get, send), 10)
    feeder.cancel()
    return sent


async def test_a_body_that_stops_arriving_is_408_in_the_envelope_after_idle_s() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    sent = await run([(0.0, b"x" * 10, True)], idle_s=0.3)
    took = loop.time() - t0
    assert 0.3 <= took < 2, took
    start, body = sent  # the app's own answer after the disconnect is dropped
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    doc = json.loads(body["body"])
    assert doc["src"] == "test-svc" and doc["error"]["code"] == "body_timeout"


async def test_a_slow_body_that_keeps_coming_is_never_cut() -> None:
    """Ten chunks 0.2 s apart (2 s in all) under a 0.5 s idle limit: the limit is on each wait, not the whole."""
    sent = await run([(0.2, b"y" * 100, i < 9) for i in range(10)], idle_s=0.5)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"1000"


async def test_a_request_without_a_body_is_not_timed() -> None:
    async def app(scope, receive, send) -> None:  # noqa: ANN001
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def never() -> dict:
        await asyncio.sleep(3600)
        return {}

    await BodyTimeoutMiddleware(app, idle_s=0.01, src="x")(scope([]), never, send)
    assert sent[0]["status"] == 204
