"""``ModelHostClient.request`` over its lean keep-alive pool (``modelhost.http1``), against raw asyncio
servers on loopback that stand in for a family service behaving well and badly: answers are parsed
(Content-Length and chunked), connections are kept and reused, a connection the service closed while
idle is not reused, a reused one that closes without answering is retried once on a new one, and every
failure maps to the client's errors (the envelope passed on, 502, 503, 504)."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable

import aiohttp
import pytest

from modelhost.client import ModelHostClient
from modelhost.errors import DeadlineExceeded, ServiceUnreachable, UpstreamEnvelope, UpstreamError

pytestmark = pytest.mark.unit


def answer(status: int, body: bytes, *, chunked: bool = False, close: bool = False) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if chunked:
        mid = len(body) // 2
        payload = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:mid], body[mid:]) if p) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + payload
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Service:
    """A raw HTTP/1.1 server: ``reply(n, request)`` says what the n-th request (from 1) gets: bytes to
    send, or None to close the connection without answering. Counts connections and requests."""

    def __init__(self, reply: Callable[[int, bytes], bytes | None], *, close_after_answer: bool = False) -> None:
        self.reply = reply
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                out = self.reply(len(self.requests), request)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def client_for() -> AsyncIterator[Callable]:
    made: list[tuple[Service, ModelHostClient]] = []
    session = aiohttp.ClientSession()

    async def make(service: Service) -> ModelHostClient:
        client = ModelHostClient("caption-svc", await service.start(), session)
        made.append((service, client))
        return client

    yield make
    for service, client in made:
        client.close()
        assert service.server is not None
        service.server.close()
    await session.close()


OK = answer(200, b'{"ok": true}')


async def test_answers_are_parsed_and_one_connection_serves_calls_in_turn(client_for: Callable) -> None:
    svc = Service(lambda n, _: answer(200, json.dumps({"n": n}).encode(), chunked=n == 2))
    client = await client_for(svc)
    got = [await client.request("POST", "/v1/captions", data=b"x" * 10, content_type="text/plain", timeout_s=5,
                                request_id="rid-1", params={"a": "b c"}) for _ in range(3)]
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert svc.connections == 1
    first = svc.requests[0]
    assert first.startswith(b"POST /v1/captions?a=b+c HTTP/1.1\r\n")
    assert b"\r\nx-request-id: rid-1\r\n" in first.lower() and first.endswith(b"\r\n\r\n" + b"x" * 10)


async def test_json_bodies_and_gets(client_for: Callable) -> None:
    svc = Service(lambda n, _: OK)
    client = await client_for(svc)
    await client.request("POST", "/v1/models/m/load", json_body={"k": [1, 2]}, timeout_s=5)
    await client.request("GET", "/v1/models", timeout_s=5)
    head, body = svc.requests[0].split(b"\r\n\r\n", 1)
    assert json.loads(body) == {"k": [1, 2]} and b"content-type: application/json" in head.lower()
    assert svc.requests[1].startswith(b"GET /v1/models HTTP/1.1\r\n")


async def test_a_connection_the_service_closed_is_not_reused(client_for: Callable) -> None:
    svc = Service(lambda n, _: OK, close_after_answer=True)
    client = await client_for(svc)
    for _ in range(3):
        assert await client.request("GET", "/health/ready", timeout_s=5) == {"ok": True}
        await asyncio.sleep(0.05)  # the service's FIN arrives while the connection is idle
    assert svc.connections == 3


async def test_a_connection_idle_for_the_keep_alive_limit_is_not_reused(client_for: Callable, monkeypatch) -> None:
    """The service (uvicorn) closes idle connections after 5 s; the pool drops them first (``IDLE_S``), so a
    request is never written as the service closes its connection (a spurious 503, 1 in 60 at a 5 s spacing)."""
    from modelhost import http1

    svc = Service(lambda n, _: OK)  # keeps every connection open: only the pool's own limit can close one
    client = await client_for(svc)
    await client.request("GET", "/v1/models", timeout_s=5)
    await client.request("GET", "/v1/models", timeout_s=5)
    assert svc.connections == 1  # reused while fresh
    assert 0 < http1.IDLE_S < 5.0  # below uvicorn's timeout_keep_alive
    monkeypatch.setattr(http1, "IDLE_S", 0.0)  # now every idle connection is past the limit
    await client.request("GET", "/v1/models", timeout_s=5)
    assert svc.connections == 2


async def test_connection_close_in_the_answer_is_honoured(client_for: Callable) -> None:
    svc = Service(lambda n, _: answer(200, b"{}", close=True))
    client = await client_for(svc)
    for _ in range(2):
        assert await client.request("GET", "/v1/models", timeout_s=5) == {}
    assert svc.connections == 2


async def test_a_reused_connection_closed_without_an_answer_is_retried_once_on_a_new_one(client_for: Callable) -> None:
    svc = Service(lambda n, _: None if n == 2 else OK)  # the 2nd request: read, then the connection closes
    client = await client_for(svc)
    assert await client.request("GET", "/v1/models", timeout_s=5) == {"ok": True}
    assert await client.request("POST", "/v1/captions", data=b"img", timeout_s=5) == {"ok": True}
    assert svc.connections == 2 and len(svc.requests) == 3


async def test_a_new_connection_closed_without_an_answer_is_503(client_for: Callable) -> None:
    svc = Service(lambda n, _: None)
    client = await client_for(svc)
    with pytest.raises(ServiceUnreachable):
        await client.request("POST", "/v1/captions", data=b"img", timeout_s=5)
    assert len(svc.requests) == 1  # not retried: the service read it on a connection never used before


async def test_refused_is_503_and_silence_is_504(client_for: Callable) -> None:
    svc = Service(lambda n, _: OK)
    client = await client_for(svc)
    assert svc.server is not None
    svc.server.close()
    await svc.server.wait_closed()
    with pytest.raises(ServiceUnreachable):
        await client.request("GET", "/v1/models", timeout_s=5)

    silent = Service(lambda n, _: b"")  # reads the request, never answers
    client = await client_for(silent)
    with pytest.raises(DeadlineExceeded):
        await client.request("GET", "/v1/models", timeout_s=0.2)


async def test_an_envelope_is_passed_on_and_anything_else_is_502(client_for: Callable) -> None:
    envelope = {"src": "caption-svc", "request_id": "r", "error": {"type": "x", "code": "model_not_ready",
                                                                   "message": "not ready", "param": None}}
    svc = Service(lambda n, _: answer(503, json.dumps(envelope).encode()) if n == 1 else answer(500, b"oops"))
    client = await client_for(svc)
    with pytest.raises(UpstreamEnvelope) as e:
        await client.request("GET", "/v1/models", timeout_s=5)
    assert e.value.status == 503 and e.value.code == "model_not_ready"
    with pytest.raises(UpstreamError) as e2:
        await client.request("GET", "/v1/models", timeout_s=5)
    assert e2.value.status == 502
