"""modelhost.wire.BodyTimeoutMiddleware against an ASGI app that reads its whole body: a body that stops is
408 in the envelope after ``idle_s``; a slow body that keeps coming is never cut, however long it takes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from modelhost.wire import BodyTimeoutMiddleware, HeadWithBody, envelope_protocol

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


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


async def test_a_head_goes_out_with_its_body_in_one_write() -> None:
    t = RecordingTransport()
    w = HeadWithBody(t)  # type: ignore[arg-type]
    w.write(HEAD)
    w.write(b"ok")
    assert t.writes == [HEAD + b"ok"]
    await asyncio.sleep(0)  # the flush scheduled for a head left alone was cancelled: nothing more goes out
    assert t.writes == [HEAD + b"ok"] and not w.is_closing()


async def test_a_head_whose_body_is_late_goes_out_alone_on_the_next_round() -> None:
    t = RecordingTransport()
    w = HeadWithBody(t)  # type: ignore[arg-type]
    w.write(HEAD)
    assert t.writes == []
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert t.writes == [HEAD]
    w.write(b"ok")
    assert t.writes == [HEAD, b"ok"]


async def test_close_and_100_continue_are_never_held_back() -> None:
    t = RecordingTransport()
    w = HeadWithBody(t)  # type: ignore[arg-type]
    w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert t.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    w.write(HEAD)  # a HEAD answer: no body follows, the connection closes
    w.close()
    assert t.writes[-1] == HEAD and t.closed


async def test_a_head_held_when_the_connection_is_lost_is_dropped() -> None:
    t = RecordingTransport()
    w = HeadWithBody(t)  # type: ignore[arg-type]
    w.write(HEAD)
    t.closed = True  # the client went away before the loop's next round
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert t.writes == []


async def test_uvicorn_answers_in_one_write_and_a_stream_shows_its_head_before_its_first_chunk() -> None:
    """The real protocol on loopback: a whole answer arrives in one piece (one write, so one segment); a stream's
    head comes at once, its first chunk 0.5 s later."""
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def whole(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    async def chunks() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.5)
        yield b"late"

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/whole", whole), Route("/stream", stream)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, http=envelope_protocol("test-svc"), log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(1000):  # 10 s at most
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start within 10 s"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /whole HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await asyncio.wait_for(reader.read(65536), 5)
        assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(b"\r\n\r\nhello")  # head and body at once
        t0 = asyncio.get_running_loop().time()
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and asyncio.get_running_loop().time() - t0 < 0.4
        assert b"late" in await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
