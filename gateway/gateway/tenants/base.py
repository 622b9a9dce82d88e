"""What every tenant client shares: the surface of ``ModelHostClient`` over another server's own API.

A tenant client stands for one server (one Ollama, one llama-swap, one HTTP server) and the catalog
models it serves. The coordinator's effects and ``ModelAccess`` use it exactly as they use a family
service's client, so the Core treats a tenant's model as an ordinary ledger model:

- ``models()`` reads the server's residency and answers a ``ModelsReply`` with one ``ModelRow`` per
  catalog model it serves (ready with the server's own figure for its memory where it gives one, else
  unloaded; ``loading``/``unloading`` while the server says so, which reconciliation leaves alone).
- ``load(id)`` makes the server load the model and answers its row once the residency shows it.
- ``unload(id)`` asks the server to let it go and answers once the residency no longer shows it
  (``worker_stopped`` True: nothing of it stays; the effects then verify the release with the meter).
- ``request`` and ``stream`` (the proxy) map errors as the family services' client does; an error the
  server answers without an envelope keeps its status and the server's message.

Every call is bounded: a connection gets ``connect_timeout_s``, a control call (residency, unload)
``control_timeout_s``; a server that is down is 503 ``service_unavailable`` at once, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient, read_all
from modelhost.contract import ModelRow, ModelsReply, ReadyReply, UnloadReply
from modelhost.errors import (
    REQUEST_ID_HEADER,
    DeadlineExceeded,
    ModelNotFound,
    ServiceUnreachable,
    UpstreamEnvelope,
    UpstreamError,
)

log = logging.getLogger(__name__)

# A control call's answer is small; a longer one is a misconfigured URL.
_MAX_ERROR_TEXT = 300
# How the servers say a load ran out of memory. Their errors carry no code (Ollama: a 500 with
# {"error": "llama runner process has terminated: cudaMalloc failed: out of memory"}), so this one
# place reads their text, and only for a failed load: the coordinator's answer to out_of_memory is
# to evict and retry once.
_OUT_OF_MEMORY = re.compile(r"out of memory|cudaMalloc failed|unable to allocate|failed to allocate|"
                            r"requires more (system )?memory", re.IGNORECASE)


@dataclass(frozen=True)
class Residency:
    """One model the server holds, by the server's own figures (None: it gives none): ``vram_bytes`` on
    the GPU, ``size_bytes`` in all (for a model on the CPU); ``state`` is ready, loading or unloading."""

    vram_bytes: int | None = None
    size_bytes: int | None = None
    state: str = "ready"

    def memory_bytes(self, spec: ModelSpec) -> int | None:
        """What it holds of the device ``spec`` is charged to."""
        return self.vram_bytes if spec.wants_gpu else self.size_bytes


class TenantClient(ModelHostClient):
    """One server and the catalog models it serves; subclasses speak its API."""

    backend = "tenant"

    def __init__(self, url: str, specs: list[ModelSpec], session: aiohttp.ClientSession, *,
                 connect_timeout_s: float = 5.0, control_timeout_s: float = 10.0, poll_s: float = 0.1) -> None:
        super().__init__(f"{self.backend}@{urlsplit(url).netloc or url}", url, session)
        self.specs = {s.id: s for s in specs}
        self.connect_timeout_s = connect_timeout_s
        self.control_timeout_s = control_timeout_s
        self.poll_s = poll_s

    # what a subclass writes ----------------------------------------------------------------------

    async def residency(self) -> dict[str, Residency]:
        """What the server holds now, by its own model names."""
        raise NotImplementedError

    async def _load(self, spec: ModelSpec, timeout_s: float) -> None:
        """Ask the server to load ``spec.source``; return when it says it has."""
        raise NotImplementedError

    async def _unload(self, spec: ModelSpec) -> None:
        """Ask the server to let ``spec.source`` go."""
        raise NotImplementedError

    def held(self, spec: ModelSpec, resident: dict[str, Residency]) -> Residency | None:
        """``spec``'s entry in the server's residency (a subclass may know other spellings of a name)."""
        return resident.get(spec.source)

    # the model host API's surface -----------------------------------------------------------------

    async def models(self, *, timeout_s: float | None = None) -> ModelsReply:
        resident = await self.residency()
        return ModelsReply(family="llm", service=self.name, meter=self.backend,
                           data=[self._row(spec, self.held(spec, resident)) for spec in self.specs.values()])

    async def ready(self, *, timeout_s: float = 2.0) -> ReadyReply:
        await self.residency()
        return ReadyReply(status="ok", family="llm", models=len(self.specs))

    async def load(self, model: str, *, timeout_s: float, request_id: str | None = None) -> ModelRow:
        """Load ``model`` (a catalog id) at the server; its row once the server's residency shows it. The
        residency is read first, so a server that is down fails fast whatever ``timeout_s`` is."""
        spec = self._spec(model)
        t0 = time.monotonic()
        deadline = t0 + timeout_s  # already there, perhaps still starting: wait for it to be ready
        if self.held(spec, await self.residency()) is None:
            log.info("%s: loading %s (%s)", self.name, spec.id, spec.source)
            try:
                await self._load(spec, timeout_s)
            except UpstreamEnvelope as e:
                if e.status >= 500 and _OUT_OF_MEMORY.search(e.message):
                    e.code = "out_of_memory"
                raise
            deadline = time.monotonic() + self.control_timeout_s  # the server said it loaded it: it shows at once
        entry = await self._until(spec, lambda r: r is not None and r.state == "ready", deadline)
        if entry is None or entry.state != "ready":
            raise UpstreamError(f"{self.name} said it loaded {spec.source} but does not list it as ready "
                                f"({entry.state if entry else 'not listed'})", code="bad_upstream_response")
        row = self._row(spec, entry)
        return row.model_copy(update={"load_s": round(time.monotonic() - t0, 3)})

    async def unload(self, model: str, *, drain: bool = True, timeout_s: float,
                     request_id: str | None = None) -> UnloadReply:
        """Unload ``model`` at the server; answered once its residency no longer shows it (state
        ``unloading`` if it still does after ``timeout_s``). ``freed_bytes`` is the server's own figure
        for what it held (0 where it gives none); the meter is the judge of the release."""
        spec = self._spec(model)
        t0 = time.monotonic()
        before = self.held(spec, await self.residency())
        if before is not None:
            log.info("%s: unloading %s (%s)", self.name, spec.id, spec.source)
            await self._unload(spec)
        after = await self._until(spec, lambda r: r is None, t0 + timeout_s)
        return UnloadReply(model=spec.id, state="unloaded" if after is None else "unloading",
                           freed_bytes=(before.memory_bytes(spec) or 0) if before is not None and after is None else 0,
                           unload_s=round(time.monotonic() - t0, 3), worker_stopped=after is None)

    # plumbing ------------------------------------------------------------------------------------

    def _spec(self, model: str) -> ModelSpec:
        spec = self.specs.get(model)
        if spec is None:
            raise ModelNotFound(f"{self.name} serves no catalog model {model!r}", param="model")
        return spec

    def _row(self, spec: ModelSpec, entry: Residency | None) -> ModelRow:
        memory = entry.memory_bytes(spec) if entry is not None else None
        return ModelRow(
            id=spec.id, family=spec.family, backend=spec.backend, source=spec.source,
            state=entry.state if entry is not None else "unloaded",
            device_requested=spec.device, device=spec.device if entry is not None else None,
            memory_bytes=memory, peak_memory_bytes=memory,
            memory_estimate_bytes=spec.memory_estimate_bytes, ttl_s=spec.ttl_s, pin=spec.pin,
            priority=spec.priority, group=spec.group, max_batch=spec.max_batch)

    async def _until(self, spec: ModelSpec, done: Any, deadline: float) -> Residency | None:
        """Poll the residency until ``done(entry)`` or the deadline; the last entry read."""
        delay = self.poll_s
        while True:
            entry = self.held(spec, await self.residency())
            if done(entry) or time.monotonic() >= deadline:
                return entry
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    async def control(self, method: str, url_or_path: str, *, json_body: Any = None,
                      timeout_s: float | None = None) -> Any:
        """A call of the server's own API (a path under its URL, or a whole URL): its JSON answer, or its
        text when it is not JSON; errors as ``request``'s."""
        return await self.request(method, url_or_path, json_body=json_body, timeout_s=timeout_s or self.control_timeout_s)

    async def request(self, method: str, path: str, *, timeout_s: float, request_id: str | None = None,
                      json_body: Any = None, **unsupported: Any) -> Any:
        """One call, its whole answer read: JSON parsed, else its text. A server not ours takes JSON only."""
        if any(v is not None for v in unsupported.values()):
            raise TypeError(f"{self.name} takes JSON bodies only, not {sorted(unsupported)}")
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, self.connect_timeout_s))
        async with self._open(method, path, timeout=timeout, timeout_s=timeout_s, request_id=request_id,
                              json_body=json_body) as resp:
            raw = await read_all(resp, self.name, self.name, timeout_s)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode("utf-8", "replace")

    def stream(self, method: str, path: str, *, first_byte_timeout_s: float, request_id: str | None = None,
               json_body: Any = None) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s, sock_read=first_byte_timeout_s)
        return self._open(method, path, timeout=timeout, timeout_s=first_byte_timeout_s, request_id=request_id,
                          json_body=json_body)

    @contextlib.asynccontextmanager
    async def _open(self, method: str, path: str, *, timeout: aiohttp.ClientTimeout, timeout_s: float,
                    request_id: str | None, json_body: Any = None, **_: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """``ModelHostClient._open`` for a server that is not ours: a 2xx response is yielded unread; any
        other status is raised with that status (``UpstreamEnvelope``: 4xx stays 4xx), its message the
        server's own (an OpenAI error object, Ollama's ``{"error": "..."}``, or its text)."""
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        try:
            resp = await self._session.request(method, url, json=json_body, headers=headers,
                                               timeout=timeout)
        except asyncio.TimeoutError as e:
            raise DeadlineExceeded(f"{self.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
        except (aiohttp.ClientConnectionError, OSError) as e:
            raise ServiceUnreachable(f"{self.name} is not reachable at {self.base_url}; retry shortly",
                                     retry_after_s=5) from e
        try:
            if not 200 <= resp.status < 300:
                try:
                    raw = await resp.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    raw = b""
                raise UpstreamEnvelope(resp.status, self._envelope(resp.status, raw), resp.headers.get("Retry-After"))
            yield resp
        finally:
            resp.release()

    def _envelope(self, status: int, raw: bytes) -> dict[str, Any]:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):  # an OpenAI error object (Ollama's and llama.cpp's /v1 routes)
            message, type_, code = error.get("message"), error.get("type"), error.get("code")
        else:  # Ollama's {"error": "..."}, or llama-swap's plain text
            message = error if isinstance(error, str) else raw.decode("utf-8", "replace").strip()
            type_, code = None, None
        message = f"{self.name} answered {status}: {str(message or 'no message')[:_MAX_ERROR_TEXT]}"
        return {"src": self.name, "error": {"message": message, "type": type_ or "upstream_error",
                                            "code": code if isinstance(code, str) else "upstream_error", "param": None}}
