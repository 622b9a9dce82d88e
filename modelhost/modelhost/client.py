"""The client the gateway uses to talk to a family service's model host API.

Calls whose whole answer is read (``request``, the host API) go over ``modelhost.http1``: one write per
request, one parser callback per answer, no task per request; at 16 concurrent requests to a 20 ms
service that took the gateway from 0.6x to about 0.9x of calling the service directly
(bench/gateway_overhead.py). Streams, and base URLs other than plain ``http://host:port``, use the one
pooled ``aiohttp.ClientSession`` (httpx's pool collapses as a proxy client under concurrency on these
machines; see shared/notes/build-machines.md). Upstream errors come back
as typed exceptions: an envelope from the service is passed on unchanged (its ``src`` kept), a
refused connection is 503 ``service_unavailable``, a timeout 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import urllib.parse
from typing import Any, AsyncIterator, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from .auth import bearer_header
from .contract import CacheDeleted, ModelRow, ModelsReply, PullStatus, ReadyReply, UnloadReply
from .errors import (  # noqa: F401 - ServiceUnreachable and UpstreamEnvelope are re-exported for callers
    REQUEST_ID_HEADER,
    DeadlineExceeded,
    ServiceUnreachable,
    UpstreamEnvelope,
    UpstreamError,
)
from .http1 import IDLE_S, ConnectionClosed, Http1Pool

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
    boundary = "roundhouse" + os.urandom(16).hex()
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
    def __init__(self, name: str, base_url: str, session: aiohttp.ClientSession, *,
                 internal_token: str | None = None) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._session = session
        # The deployment's internal credential (modelhost.auth), sent on every call; None for a server that
        # takes none (an external tenant's, a service run by hand).
        self._auth: list[tuple[str, str]] = [bearer_header(internal_token)] if internal_token else []
        url = urllib.parse.urlsplit(self.base_url)
        # Whole-answer calls go over the lean pool (see modelhost.http1); anything but plain http, aiohttp.
        self._pool = Http1Pool(url.hostname, url.port or 80) if url.scheme == "http" and url.hostname and \
            not url.path.strip("/") else None

    def close(self) -> None:
        """Close the idle connections of the lean pool (the aiohttp session is its owner's to close)."""
        if self._pool is not None:
            self._pool.close()

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
        if self._pool is not None and (data is None or isinstance(data, bytes)):
            return await self._request_lean(method, path, timeout_s=timeout_s, request_id=request_id, json_body=json_body,
                                            data=data, params=params, content_type=content_type)
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with self._open(method, path, timeout=timeout, timeout_s=timeout_s, request_id=request_id,
                              json_body=json_body, data=data, params=params, content_type=content_type) as resp:
            raw = await read_all(resp, self.name, f"the {self.name} service", timeout_s)
            return json.loads(raw) if raw else None

    async def _request_lean(self, method: str, path: str, *, timeout_s: float, request_id: str | None, json_body: Any,
                            data: bytes | None, params: dict[str, str] | None, content_type: str | None) -> Any:
        """``request`` over ``self._pool``, with ``_open``'s error mapping."""
        assert self._pool is not None
        headers: list[tuple[str, str]] = [*self._auth, (REQUEST_ID_HEADER, request_id)] if request_id else [*self._auth]
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.append(("Content-Type", "application/json"))
        elif data is not None:
            body = data
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        target = path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            answer = await self._pool.request(method, target, headers, body, timeout_s=timeout_s)
        except asyncio.TimeoutError as e:
            raise DeadlineExceeded(f"{self.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
        except ConnectionClosed as e:
            if e.answered:
                raise ServiceUnreachable(f"the {self.name} service closed the connection mid-answer; retry shortly",
                                         retry_after_s=5) from e
            raise ServiceUnreachable(f"the {self.name} service is not reachable; retry shortly", retry_after_s=5) from e
        except OSError as e:
            raise ServiceUnreachable(f"the {self.name} service is not reachable; retry shortly", retry_after_s=5) from e
        if not 200 <= answer.status < 300:
            raise self._error(answer.status, answer.body, answer.headers.get("retry-after"))
        return json.loads(answer.body) if answer.body else None

    def _error(self, status: int, raw: bytes, retry_after: str | None) -> Exception:
        """A non-2xx answer: its envelope as ``UpstreamEnvelope``, anything else 502."""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return UpstreamEnvelope(status, body, retry_after)
        return UpstreamError(f"{self.name} answered {status} without an error envelope", code="bad_upstream_response")

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
        headers: dict[str, str] = dict(self._auth)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
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
                raise self._error(resp.status, raw, resp.headers.get("Retry-After"))
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

    async def pull(self, model: str, *, timeout_s: float = 10.0, request_id: str | None = None) -> PullStatus:
        """Start (or join) a pull of ``model``'s weights; answered at once with its status."""
        body = await self.request("POST", f"/v1/models/{model}/pull", timeout_s=timeout_s, request_id=request_id)
        return self._parse(PullStatus, body)

    async def pull_status(self, model: str, *, timeout_s: float = 10.0) -> PullStatus:
        return self._parse(PullStatus, await self.request("GET", f"/v1/models/{model}/pull", timeout_s=timeout_s))

    async def delete_cache(self, model: str, *, timeout_s: float = 60.0, request_id: str | None = None) -> CacheDeleted:
        body = await self.request("DELETE", f"/v1/models/{model}/cache", timeout_s=timeout_s, request_id=request_id)
        return self._parse(CacheDeleted, body)

    def _parse(self, model: type[T], body: Any) -> T:
        return reply_as(model, body, self.name)


async def read_all(resp: aiohttp.ClientResponse, name: str, subject: str, timeout_s: float) -> bytes:
    """A response's whole body; 504 ``upstream_timeout`` past the timeout, 503 when ``subject`` closes mid-answer."""
    try:
        return await resp.read()
    except asyncio.TimeoutError as e:
        raise DeadlineExceeded(f"{name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
    except aiohttp.ClientError as e:
        raise ServiceUnreachable(f"{subject} closed the connection mid-answer; retry shortly", retry_after_s=5) from e


def new_session(*, limit: int = 256) -> aiohttp.ClientSession:
    """The one pooled session: keep-alive connections, no cookie jar, no trust of proxy env vars."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=IDLE_S, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 json_serialize=json.dumps)
