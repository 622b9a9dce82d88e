"""What the gateway and every family service do on the wire, below the routes (issue 13):

* ``serve``: uvicorn with ``EnvelopeHttpProtocol``, whose answer to a request HTTP cannot parse (a bad header,
  a broken request line, bad chunked framing) is the error envelope, 400 ``bad_http_request``; uvicorn's own is
  plain text. It is the one answer uvicorn writes itself; everything else reaches the app.
* ``BodyTimeoutMiddleware``: a request whose body stops arriving (fewer bytes than its Content-Length, a chunked
  body that never ends) is answered 408 ``body_timeout`` once ``idle_s`` pass without a byte, and its connection
  closed; uvicorn would wait for it for good, holding the request's task and whatever it had taken. The limit is
  on each wait, not on the whole body, so a slow upload of gigabytes still goes through.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import REQUEST_ID_HEADER, clean_request_id, envelope, new_request_id

log = logging.getLogger(__name__)

_RID = REQUEST_ID_HEADER.lower().encode()


def _error(src: str, rid: str, status: int, reason: bytes, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response carrying the envelope, closing its connection."""
    body = json.dumps(envelope(src, rid, type="invalid_request_error", code=code, message=message)).encode()
    head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"x-request-id: %s\r\nconnection: close\r\n\r\n") % (status, reason, len(body), rid.encode())
    return head + body


def envelope_protocol(src: str) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, answering what it cannot parse with ``src``'s envelope."""

    class EnvelopeHttpProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(HeadWithBody(transport))  # type: ignore[arg-type]

        def send_400_response(self, msg: str) -> None:
            self.transport.write(_error(src, new_request_id(), 400, b"Bad Request", "bad_http_request",
                                        f"the request is not valid HTTP/1.1 ({msg.rstrip('.')})"))
            self.transport.close()

    return EnvelopeHttpProtocol


class HeadWithBody:
    """The transport as uvicorn's HTTP protocol writes to it, sending a response's head together with its body.

    uvicorn writes the head (status line and headers) and the body of an answer in two ``write`` calls: on a
    TCP_NODELAY socket that is two segments and two wake-ups of the client, and on a busy machine the client,
    woken, can take the CPU from the server twice per answer. Here a head is held back until the next write (the
    body, written in the same step of the response's task) and the two go out as one. A head whose body is not
    written before the event loop's next round (a stream waiting for its first chunk) goes out alone then; every
    other write, and ``close``, send what is held first, so the bytes keep their order."""

    __slots__ = ("_flush", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held = b""
        self._flush: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._held:
            data = self._held + data
            self._release()
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):  # a head (not 100 Continue)
            self._held = data
            self._flush = asyncio.get_running_loop().call_soon(self._send_held)
            return
        self._transport.write(data)

    def _release(self) -> None:
        self._held = b""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def _send_held(self) -> None:
        held = self._held
        self._release()
        if held and not self._transport.is_closing():  # the connection was lost meanwhile: nobody to send it to
            self._transport.write(held)

    def close(self) -> None:
        self._send_held()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # the rest of the transport's interface, unchanged
        return getattr(self._transport, name)


def serve(app, *, src: str, host: str, port: int, log_level: str,  # noqa: ANN001 - ASGI app
          graceful_s: float | None = None) -> None:
    """``graceful_s``: on SIGTERM, how long requests in flight may go on before they are cancelled (None: until
    they end, which an open server-sent events stream never does)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False, http=envelope_protocol(src),
                timeout_graceful_shutdown=graceful_s)


def _expects_body(scope: dict) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class BodyTimeoutMiddleware:
    """Plain ASGI. While a request's body is still due, each wait for more of it is bounded by ``idle_s``
    (``asyncio.timeout``: a timer, no task); past it the client gets 408 ``body_timeout`` (when nothing was
    answered yet), the app reads a disconnect, and whatever it sends afterwards is dropped."""

    def __init__(self, app, idle_s: float, src: str) -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self.idle_s = idle_s
        self.src = src

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or not _expects_body(scope):
            await self.app(scope, receive, send)
            return
        due = True  # body still to come
        started = timed_out = False

        async def timed_receive() -> dict:
            nonlocal due, timed_out
            if not due or timed_out:
                return await receive()  # the body is in: a wait for the client leaving is not bounded
            try:
                async with asyncio.timeout(self.idle_s):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                log.warning("%s %s: no body byte for %.0f s; answering 408", scope.get("method"), scope.get("path"), self.idle_s)
                if not started:
                    await send_408()
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                due = False
            return message

        async def send_408() -> None:
            rid = (scope.get("state") or {}).get("request_id")
            for name, value in scope["headers"]:
                if name == _RID and rid is None:
                    rid = clean_request_id(value.decode("latin-1"))
            rid = rid or new_request_id()
            body = json.dumps(envelope(self.src, rid, type="invalid_request_error", code="body_timeout",
                                       message=f"the request body stopped arriving: no byte for {self.idle_s:g} s "
                                               "(a Content-Length larger than the body sent?)")).encode()
            await send({"type": "http.response.start", "status": 408, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (_RID, rid.encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if timed_out:
                return  # answered already (or the client is gone)
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:
            if not timed_out:
                raise
            # The app failed on the disconnect it read: expected, and already answered.
