"""The client the gateway uses to talk to a family service's model host API.

One pooled ``aiohttp.ClientSession`` for all services (httpx's pool collapses as a proxy client
under concurrency on these machines; see shared/notes/build-machines.md). Upstream errors come back
as typed exceptions: an envelope from the service is passed on unchanged (its ``src`` kept), a
refused connection is 503 ``service_unavailable``, a timeout 504.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import aiohttp

from .errors import REQUEST_ID_HEADER, DeadlineExceeded, RoundhouseError, Unavailable, UpstreamError

log = logging.getLogger(__name__)


class UpstreamEnvelope(RoundhouseError):
    """A service answered with an error envelope; the gateway passes it on as it came."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: str | None) -> None:
        err = body.get("error") or {}
        super().__init__(str(err.get("message") or "upstream error"), param=err.get("param"))
        self.status = status
        self.type = str(err.get("type") or "upstream_error")
        self.code = str(err.get("code") or "upstream_error")
        self.src = str(body.get("src") or "upstream")
        if retry_after is not None:
            try:
                self.retry_after_s = float(retry_after)
            except ValueError:
                pass


class ServiceUnreachable(Unavailable):
    code = "service_unavailable"


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
        headers: dict[str, str] | None = {REQUEST_ID_HEADER: request_id} if request_id else None
        if content_type is not None:
            headers = {**(headers or {}), "Content-Type": content_type}
        url = self.base_url + path
        try:
            async with self._session.request(
                method, url, json=json_body, data=data, params=params, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = await resp.read()
                if 200 <= resp.status < 300:
                    return json.loads(raw) if raw else None
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                if isinstance(body, dict) and isinstance(body.get("error"), dict):
                    raise UpstreamEnvelope(resp.status, body, resp.headers.get("Retry-After"))
                raise UpstreamError(f"{self.name} answered {resp.status} without an error envelope", code="bad_upstream_response")
        except (aiohttp.ClientConnectionError, OSError) as e:
            if isinstance(e, (aiohttp.ServerTimeoutError,)):
                raise DeadlineExceeded(f"{self.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
            raise ServiceUnreachable(f"the {self.name} service is not reachable; retry shortly", retry_after_s=5) from e
        except asyncio.TimeoutError as e:
            raise DeadlineExceeded(f"{self.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e

    # the model host API ------------------------------------------------------------------------

    async def models(self, *, timeout_s: float = 5.0) -> dict[str, Any]:
        return await self.request("GET", "/v1/models", timeout_s=timeout_s)

    async def ready(self, *, timeout_s: float = 2.0) -> dict[str, Any]:
        return await self.request("GET", "/health/ready", timeout_s=timeout_s)

    async def load(self, model: str, *, timeout_s: float, request_id: str | None = None) -> dict[str, Any]:
        return await self.request("POST", f"/v1/models/{model}/load", timeout_s=timeout_s, request_id=request_id)

    async def unload(self, model: str, *, drain: bool, timeout_s: float, request_id: str | None = None) -> dict[str, Any]:
        return await self.request("POST", f"/v1/models/{model}/unload", params={"drain": "true" if drain else "false"},
                                  timeout_s=timeout_s, request_id=request_id)


def new_session(*, limit: int = 256) -> aiohttp.ClientSession:
    """The one pooled session: keep-alive connections, no cookie jar, no trust of proxy env vars."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 json_serialize=json.dumps)
