"""Keep-alive HTTP/1.1 connections to one family service, for calls whose whole answer is read.

Why not aiohttp for these: the gateway's hop is one event loop, and at 16 concurrent requests its
throughput is set by how long each request holds that loop and how often it goes round it. On
Python 3.11 aiohttp writes a request body from a task of its own (one more trip round the loop,
behind every other request's work) and costs about a fifth of the gateway's CPU per request. Here a
request is one ``transport.write`` of head and body, and the answer is parsed by httptools (the
parser uvicorn uses) in ``data_received``; the caller's future resolves when the message is complete.

What it does not do: TLS, proxies, redirects, cookies, streaming (``ModelHostClient.stream`` keeps
aiohttp). A connection the service closed while idle is noticed before reuse; one that closes before
any byte of the answer arrived, having been reused, is retried once on a new connection (the service
never read that request: uvicorn closes idle keep-alive connections after 5 s).
"""

from __future__ import annotations

import asyncio
import collections

import httptools

# Idle connections are dropped after this long: shorter than the services' keep-alive (uvicorn: 5 s), so a
# request is never written on a connection the service is closing at that moment.
IDLE_S = 4.0


class ConnectionClosed(ConnectionError):
    """The service closed the connection before the answer was complete."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered  # a byte of the answer had arrived (so the service read the request)


class Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body


class _Connection(asyncio.Protocol):
    """One connection; at most one request on it at a time (no pipelining)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._answered = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionClosed(f"an answer HTTP cannot parse: {e}", answered=True))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionClosed(f"the connection closed before the answer ended ({exc or 'EOF'})",
                                    answered=self._answered))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()
        answer = Answer(self._parser.get_status_code(), self._headers, b"".join(self._body))
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    # the pool's side
    def send(self, data: bytes, waiter: asyncio.Future[Answer]) -> None:
        self._waiter = waiter
        self._headers = {}
        self._body = []
        self._answered = False
        assert self.transport is not None
        self.transport.write(data)

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Connections to ``host:port``: at most ``limit`` open at once (more callers wait for one), idle
    ones kept for reuse."""

    def __init__(self, host: str, port: int, *, limit: int = 256) -> None:
        self.host = host
        self.port = port
        self._host_header = f"Host: {host}:{port}\r\n".encode("latin-1")
        self._idle: collections.deque[tuple[_Connection, float]] = collections.deque()  # (connection, idle since)
        self._slots = asyncio.Semaphore(limit)
        self.opened = 0  # connections opened so far (tests read it)

    async def request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes,
                      *, timeout_s: float) -> Answer:
        """Send one request and read its whole answer. Raises ``asyncio.TimeoutError`` after
        ``timeout_s``, ``ConnectionClosed`` or ``OSError`` when the service cannot be reached."""
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), self._host_header]
        lines += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers]
        lines.append(f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1"))
        data = b"".join(lines) + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._slots.locked():  # every connection is busy: wait for one (rare; the fast path sets no timer)
            async with asyncio.timeout(timeout_s):
                await self._slots.acquire()
        else:
            await self._slots.acquire()
        try:
            conn, reused = await self._connection(deadline)
            try:
                return await self._exchange(conn, data, deadline)
            except ConnectionClosed as e:
                if not reused or e.answered:
                    raise
            conn, _ = await self._connection(deadline, fresh=True)  # closed while idle: the service never read it
            return await self._exchange(conn, data, deadline)
        finally:
            self._slots.release()

    async def _connection(self, deadline: float, *, fresh: bool = False) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        while self._idle and not fresh:
            conn, since = self._idle.pop()  # the most recently used: the least likely to have timed out
            if loop.time() - since >= IDLE_S:
                conn.close()  # the service is about to close it, if it has not already: never race it
                continue
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn, True
        async with asyncio.timeout_at(deadline):
            _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self.opened += 1
        return conn, False

    async def _exchange(self, conn: _Connection, data: bytes, deadline: float) -> Answer:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        timer = loop.call_at(deadline, _expire, waiter)
        conn.send(data, waiter)
        try:
            answer = await waiter
        except BaseException:
            conn.close()  # timed out, cancelled or failed mid-answer: the connection's state is unknown
            raise
        finally:
            timer.cancel()
        if conn.keep_alive and not conn.closed:
            self._idle.append((conn, loop.time()))
        else:
            conn.close()
        return answer

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[0].close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())
