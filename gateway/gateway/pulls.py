"""Model weights ahead of their load, from the gateway (like ``ollama pull``): the admin pull, its progress as
polling and as server-sent events, the cache delete, and the gate every load passes first.

The gate (``ensure_cached``) is why a download never holds the swap slot. A model whose weights are not
cached would download them inside its load, and the coordinator holds a device's one swap for the whole load:
every other model's swap would wait behind a download of up to ``load_timeout_s``. So before a request (or an
admin load, or a preload) asks the coordinator for its model, the gate asks the model's service whether the
weights are cached; when they are not, it pulls them (in the service, outside its worker) and only then lets
the request ask for the swap. The coordinator never sees a request waiting for a download.

Invariants and costs:

* A model is asked about once per gateway lifetime when its weights are cached (or it has nothing to pull, or
  its service has no pull route: 404/405): it is then remembered (``_cached``) and the hot path costs a set
  lookup. The cache delete forgets it. Asking on every request cost a whole extra round trip to the service
  per request (bench/gateway_overhead.py's stand-in service has no pull route).
* One pull per model: every request waiting for the same weights waits on one task, each for its own time; a
  request whose time runs out gets 503 ``model_not_ready`` with the progress, and the pull goes on.
* A service that cannot answer the question (down, older, no pull route) lets the request through: the load
  then meets the same trouble and reports it where it always did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import AsyncIterator

from modelhost.catalog import Catalog, ModelSpec
from modelhost.client import ModelHostClient
from modelhost.contract import CacheDeleted, PullStatus
from modelhost.errors import (
    Conflict,
    ModelNotFound,
    ModelNotReady,
    RoundhouseError,
    ServiceNotConfigured,
    UpstreamEnvelope,
    UpstreamError,
)

log = logging.getLogger(__name__)

RESIDENT_LEDGER_STATES = ("loading", "ready", "draining", "unloading")
# Answers to "are the weights cached?" that mean nothing is to be pulled, now or later: the service has no pull
# route (an older service, a stand-in) or does not know the model.
NO_PULL_STATUSES = (404, 405)


class PullUnsupported(Conflict):
    code = "pull_unsupported"


class ModelLoaded(Conflict):
    code = "model_loaded"


def size_words(n: float) -> str:
    """``412.0 MB``: bytes in the largest decimal unit that keeps a digit before the point."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def progress_words(s: PullStatus) -> str:
    """``412.0 MB of 990.0 MB, 35.2 MB/s, 16 s left`` (what is known of it)."""
    parts = [size_words(s.bytes_done) + (f" of {size_words(s.bytes_total)}" if s.bytes_total else "")]
    if s.rate_bytes_per_s:
        parts.append(f"{size_words(s.rate_bytes_per_s)}/s")
    if s.eta_s is not None and s.state == "pulling":
        parts.append(f"{s.eta_s:.0f} s left")
    return ", ".join(parts)


class Pulls:
    def __init__(self, catalog: Catalog, clients: dict[str, ModelHostClient], coordinator, *,  # noqa: ANN001
                 poll_s: float = 0.5) -> None:
        self.catalog = catalog
        self.clients = clients
        self.coordinator = coordinator  # reads model_state only
        self.poll_s = poll_s
        self._cached: set[str] = set()  # weights known to be on the service's disk, or nothing to pull
        self._gates: dict[str, asyncio.Task] = {}  # model -> the pull a load waits for

    def _target(self, model_id: str) -> tuple[ModelSpec, ModelHostClient]:
        spec = self.catalog.get(model_id)
        if spec is None:
            raise ModelNotFound(f"model {model_id!r} is not in the catalog; known: {[m.id for m in self.catalog.models]}",
                                param="model")
        if spec.tenant:
            raise PullUnsupported(f"model {model_id} is served by its {spec.backend} server, which keeps its own weights "
                                  f"(pull it there, e.g. `ollama pull {spec.source}`)")
        client = self.clients.get(spec.family)
        if client is None:
            raise ServiceNotConfigured(f"no {spec.family} service is configured (GATEWAY_SERVICES)")
        return spec, client

    async def start(self, model_id: str, request_id: str | None = None) -> PullStatus:
        _, client = self._target(model_id)
        return await client.pull(model_id, request_id=request_id)

    async def status(self, model_id: str) -> PullStatus:
        _, client = self._target(model_id)
        s = await client.pull_status(model_id)
        if s.cached:
            self._cached.add(model_id)
        return s

    async def follow(self, model_id: str) -> AsyncIterator[PullStatus]:
        """The pull's status at each change (and at least every few seconds), until it has ended."""
        last = None
        quiet_since = time.monotonic()
        while True:
            s = await self.status(model_id)
            key = (s.state, s.bytes_done, s.bytes_total)
            if key != last or time.monotonic() - quiet_since > 5.0 or s.finished:
                last, quiet_since = key, time.monotonic()
                yield s
            if s.finished or s.state == "idle":
                return
            await asyncio.sleep(self.poll_s)

    async def events(self, model_id: str, first: PullStatus) -> AsyncIterator[bytes]:
        """Server-sent events: ``progress`` at each change, then one ``end`` (state done or failed), then the
        stream closes. ``first`` is the status the POST answered (validated before the stream starts)."""
        yield _event("progress", first)
        if first.finished:
            yield _event("end", first)
            return
        last = first
        try:
            async for s in self.follow(model_id):
                last = s
                yield _event("end" if s.finished else "progress", s)
        except RoundhouseError as e:  # the service went away mid-pull: say so in the stream, then close it
            yield _error(e.code, e.message)
            return
        if not last.finished:  # the service no longer knows the pull (it restarted)
            yield _error("pull_lost", f"the service no longer knows the pull of {model_id} (did it restart?); pull again")

    async def delete(self, model_id: str, request_id: str | None = None) -> CacheDeleted:
        """The model's downloaded weights removed; 409 ``model_loaded`` while the coordinator holds it."""
        _, client = self._target(model_id)
        ledger = self.coordinator.model_state(model_id).ledger_state
        if ledger in RESIDENT_LEDGER_STATES:
            raise ModelLoaded(f"model {model_id} is {ledger}; unload it (POST /admin/models/{model_id}/unload) before "
                              "deleting its weights")
        self._cached.discard(model_id)
        return await client.delete_cache(model_id, request_id=request_id)

    async def close(self) -> None:
        """Stop the gates' polling (the pulls themselves go on in their services)."""
        for gate in self._gates.values():
            gate.cancel()
        await asyncio.gather(*self._gates.values(), return_exceptions=True)

    # the gate of every load ----------------------------------------------------------------------------

    async def ensure_cached(self, spec: ModelSpec, timeout_s: float) -> None:
        """Return once ``spec``'s weights are on its service's disk, pulling them first when they are not
        (the module's docstring). 502 ``pull_failed`` with the reason when they cannot be fetched; 503
        ``model_not_ready`` with the progress when the pull outlasts ``timeout_s`` (it goes on)."""
        if spec.id in self._cached or spec.tenant or spec.family not in self.clients:
            return
        gate = self._gates.get(spec.id)
        if gate is None or gate.done():
            gate = asyncio.create_task(self._pull_if_missing(spec), name=f"pull-gate-{spec.id}")
            self._gates[spec.id] = gate
        try:
            async with asyncio.timeout(timeout_s):
                status = await asyncio.shield(gate)
        except asyncio.TimeoutError:
            try:
                words = progress_words(await self.clients[spec.family].pull_status(spec.id))
            except RoundhouseError:
                words = "progress unknown"
            raise ModelNotReady(f"model {spec.id}: its weights are still downloading ({words}); retry later",
                                retry_after_s=30.0) from None
        if status is not None and status.state == "failed":
            raise UpstreamError(f"model {spec.id}: its weights could not be fetched: {status.error}", code="pull_failed")

    async def _pull_if_missing(self, spec: ModelSpec) -> PullStatus | None:
        client = self.clients[spec.family]
        try:
            s = await client.pull_status(spec.id)
            if s.cached is not False:  # cached, or nothing a pull could fetch: the load does what it always did
                self._cached.add(spec.id)
                return None
            log.info("model %s: weights not cached; pulling them before its load (no swap slot held)", spec.id)
            t0 = time.monotonic()
            s = await client.pull(spec.id)
            while not s.finished:
                await asyncio.sleep(self.poll_s)
                s = await client.pull_status(spec.id)
        except RoundhouseError as e:
            if isinstance(e, UpstreamEnvelope) and e.status in NO_PULL_STATUSES:
                self._cached.add(spec.id)  # nothing to pull, now or later (unreachable, a timeout: asked again)
            log.warning("model %s: cannot ask %s about its weights (%s); loading without a pull", spec.id, client.name,
                        e.message)
            return None
        if s.state == "done":
            self._cached.add(spec.id)
            log.info("model %s: weights pulled (%s) in %.1f s", spec.id, progress_words(s), time.monotonic() - t0)
        return s


def _event(kind: str, s: PullStatus) -> bytes:
    return f"event: {kind}\ndata: {s.model_dump_json()}\n\n".encode()


def _error(code: str, message: str) -> bytes:
    return f"event: error\ndata: {json.dumps({'code': code, 'message': message})}\n\n".encode()
