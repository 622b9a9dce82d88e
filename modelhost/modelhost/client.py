"""The client the gateway uses to talk to a family service's model host API.

One pooled ``aiohttp.ClientSession`` for all services (httpx's pool collapses as a proxy client
under concurrency on these machines; see shared/notes/build-machines.md). Upstream errors come back
as typed exceptions: an envelope from the service is passed on unchanged (its ``src`` kept), a
refused connection is 503 ``service_unavailable``, a timeout 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any, AsyncIterator, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from .contract import ModelRow, ModelsReply, ReadyReply, UnloadReply
from .errors import (  # noqa: F401 - ServiceUnreachable and UpstreamEnvelope are re-exported for callers
    REQUEST_ID_HEADER,
    DeadlineExceeded,
    ServiceUnreachable,
    UpstreamEnvelope,
    UpstreamError,
)

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


def reply_as(cls: type[T], body: Any, service: str) -> T:
    """A service's answer as ``cls``; one that does not fit the contract is the service's fault (502)."""
    try:
        return cls.model_validate(body)
    except ValidationError as e:
        raise UpstreamError(f"{service} answered a {cls.__name__} that does not fit the contract: "
                            f"{e.errors()[0].get('msg') if e.errors() else e}", code="bad_upstream_response") from None


def multipart(fields: dict[str, str | None], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body built in one piece, and its Content-Type.

    aiohttp's FormData writes a small body in many small writes (many TCP segments with NODELAY)
    and costs about a tenth of a millisecond of CPU per request; the gateway forwards every upload,
    so it builds the body once. ``None`` fields are left out."""
    boundary = "roundhouse" + uuid.uuid4().hex
    b = boundary.encode()
    parts: list[bytes] = []
    for name, value in fields.items():
        if value is None:
            continue
        parts += [b"--", b, b'\r\nContent-Disposition: form-data; name="', name.encode(), b'"\r\n\r\n',
                  str(value).encode(), b"\r\n"]
    for name, filename, data in files:
        parts += [b"--", b, b'\r\nContent-Disposition: form-data; name="', name.encode(), b'"; filename="',
                  filename.encode(), b'"\r\nContent-Type: application/octet-stream\r\n\r\n', data, b"\r\n"]
    parts += [b"--", b, b"--\r\n"]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class ModelHostClient:
    def __init__(self, name: str, base_url: str, session: aiohttp.ClientSession) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session = session

    async def request(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float,
        request_id: str | None = None,
        json_body: Any = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> Any:
        """One call, its whole JSON answer read; errors as the module says."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._open(method, path, timeout=timeout, timeout_s=timeout_s, request_id=request_id,
                              json_body=json_body, data=data, params=params, content_type=content_type) as resp:
            try:
                raw = await resp.read()
            except asyncio.TimeoutError as e:
                raise DeadlineExceeded(f"{self.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
            except aiohttp.ClientError as e:
                raise ServiceUnreachable(f"the {self.name} service closed the connection mid-answer; retry shortly",
                                         retry_after_s=5) from e
            return json.loads(raw) if raw else None

    def stream(
        self,
        method: str,
        path: str,
        *,
        first_byte_timeout_s: float,
        request_id: str | None = None,
        json_body: Any = None,
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A call whose 2xx answer is read as it arrives (``resp.content``), with no limit on its total
        time: only the wait for each read is bounded. Errors before the body as ``request`` maps them."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=first_byte_timeout_s)
        return self._open(method, path, timeout=timeout, timeout_s=first_byte_timeout_s, request_id=request_id,
                          json_body=json_body)

    @contextlib.asynccontextmanager
    async def _open(self, method: str, path: str, *, timeout: aiohttp.ClientTimeout, timeout_s: float,
                    request_id: str | None, json_body: Any = None, data: Any = None,
                    params: dict[str, str] | None = None, content_type: str | None = None,
                    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The one error mapping: a 2xx response is yielded unread; an envelope is raised as
        ``UpstreamEnvelope``, any other non-2xx as 502, a refused connection as 503, a timeout as 504."""
        headers: dict[str, str] = {REQUEST_ID_HEADER: request_id} if request_id else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            resp = await self._session.request(method, self.base_url + path, json=json_body, data=data, params=params,
                                               headers=headers or None, timeout=timeout)
        except asyncio.TimeoutError as e:
            raise DeadlineExceeded(f"{self.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise ServiceUnreachable(f"the {self.name} service is not reachable; retry shortly", retry_after_s=5) from e
        try:
            if not 200 <= resp.status < 300:
                try:
                    raw = await resp.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    raw = b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                if isinstance(body, dict) and isinstance(body.get("error"), dict):
                    raise UpstreamEnvelope(resp.status, body, resp.headers.get("Retry-After"))
                raise UpstreamError(f"{self.name} answered {resp.status} without an error envelope",
                                    code="bad_upstream_response")
            yield resp
        finally:
            resp.release()

    # the model host API ------------------------------------------------------------------------

    async def models(self, *, timeout_s: float = 5.0) -> ModelsReply:
        return self._parse(ModelsReply, await self.request("GET", "/v1/models", timeout_s=timeout_s))

    async def ready(self, *, timeout_s: float = 2.0) -> ReadyReply:
        return self._parse(ReadyReply, await self.request("GET", "/health/ready", timeout_s=timeout_s))

    async def load(self, model: str, *, timeout_s: float, request_id: str | None = None) -> ModelRow:
        body = await self.request("POST", f"/v1/models/{model}/load", timeout_s=timeout_s, request_id=request_id)
        return self._parse(ModelRow, body)

    async def unload(self, model: str, *, drain: bool, timeout_s: float, request_id: str | None = None) -> UnloadReply:
        body = await self.request("POST", f"/v1/models/{model}/unload", params={"drain": "true" if drain else "false"},
                                  timeout_s=timeout_s, request_id=request_id)
        return self._parse(UnloadReply, body)

    def _parse(self, model: type[T], body: Any) -> T:
        return reply_as(model, body, self.name)


def new_session(*, limit: int = 256) -> aiohttp.ClientSession:
    """The one pooled session: keep-alive connections, no cookie jar, no trust of proxy env vars."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 json_serialize=json.dumps)
