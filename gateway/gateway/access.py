"""The seam between public routes and family services: every model request holds its model through
``ModelAccess.hold``::

    async with g.access.hold(model, "caption") as upstream:
        body = await upstream.request("POST", "/v1/captions", ...)

``hold`` asks the swap coordinator for the model (which loads it, evicting others if needed, and queues
the request meanwhile) and releases it when the block ends, however it ends; a streaming route keeps
the block open until its last byte is relayed. ``Upstream`` is the model's service for the length of
the hold: its ``request`` and ``stream`` map errors as ``ModelHostClient`` does (one mapping for both).
When the service says the model is not ready (its TTL reaper unloaded it, or the service restarted),
the coordinator is told, the model is held anew and that one call is made once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator

import aiohttp

from modelhost.catalog import Catalog, ModelSpec
from modelhost.client import ModelHostClient
from modelhost.errors import (
    DeadlineExceeded,
    ModelNotFound,
    ServiceNotConfigured,
    ServiceUnreachable,
    UpstreamEnvelope,
    UpstreamError,
)

from .coordinator.loop import Coordinator
from .coordinator.policy import INTERACTIVE
from .metrics import GatewayMetrics
from .pulls import Pulls
from .schemas import AdminLoaded, AdminUnloaded
from .tenants import Tenants

log = logging.getLogger(__name__)


class Upstream:
    """A family service while one model is held for the caller."""

    def __init__(self, access: "ModelAccess", spec: ModelSpec, client: ModelHostClient, *, lane: str,
                 timeout_s: float) -> None:
        self.access = access
        self.spec = spec
        self.client = client
        self.lane = lane
        self.timeout_s = timeout_s
        self.held = False

    @property
    def model(self) -> str:
        return self.spec.id

    async def acquire(self) -> None:
        await self.access.coordinator.acquire(self.model, lane=self.lane, timeout_s=self.timeout_s)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.access.coordinator.release(self.model)

    async def _again(self, e: UpstreamEnvelope) -> None:
        """The service no longer has the model: correct the ledger, and hold it anew (it loads again)."""
        log.info("model %s was not ready at %s (%s); telling the coordinator and retrying", self.model,
                 self.client.name, e.message)
        self.release()
        self.access.coordinator.vanished(self.model)
        await self.acquire()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``ModelHostClient.request`` on the held model's service (same arguments)."""
        try:
            return await self.client.request(method, path, **kwargs)
        except UpstreamEnvelope as e:
            if e.code != "model_not_ready":
                raise
            await self._again(e)
        return await self.client.request(method, path, **kwargs)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """``ModelHostClient.stream`` on the held model's service: the response once its status is 2xx.
        Only the opening is retried; an error raised by the caller's block passes through untouched."""
        opened = self.client.stream(method, path, **kwargs)
        try:
            resp = await opened.__aenter__()
        except UpstreamEnvelope as e:
            if e.code != "model_not_ready":
                raise
            await self._again(e)
            opened = self.client.stream(method, path, **kwargs)
            resp = await opened.__aenter__()
        try:
            yield resp
        finally:
            await opened.__aexit__(None, None, None)  # releases the connection (closes it when unread)


class ModelAccess:
    def __init__(self, catalog: Catalog, clients: dict[str, ModelHostClient], metrics: GatewayMetrics,
                 coordinator: Coordinator, *, request_timeout_s: float, tenants: Tenants | None = None) -> None:
        self.catalog = catalog
        self.clients = clients
        self.metrics = metrics
        self.coordinator = coordinator
        self.request_timeout_s = request_timeout_s
        self.tenants = tenants or Tenants([])
        # The gate every load passes first: weights not cached are pulled before the model asks for a swap
        # (gateway.pulls), so a download never holds the coordinator's swap slot. None: no gate.
        self.pulls: Pulls | None = None

    def spec(self, model_id: str, family: str | None = None) -> ModelSpec:
        spec = self.catalog.get(model_id)
        if spec is None or (family is not None and spec.family != family):
            known = [m.id for m in self.catalog.models if family is None or m.family == family]
            raise ModelNotFound(f"model {model_id!r} is not in the catalog{f' for {family}' if family else ''}; known: {known}", param="model")
        return spec

    def client(self, spec: ModelSpec) -> ModelHostClient:
        """The model's server: an external tenant's (chosen by the model: llm models live on several
        servers), else its family service's."""
        client = self.tenants.client(spec) or self.clients.get(spec.family)
        if client is None:
            raise ServiceNotConfigured(f"no {spec.family} service is configured (GATEWAY_SERVICES)")
        return client

    @contextlib.asynccontextmanager
    async def hold(self, model_id: str, family: str, *, lane: str = INTERACTIVE,
                   timeout_s: float | None = None) -> AsyncIterator[Upstream]:
        """Hold ``model_id`` resident for the block; timed per family
        (``roundhouse_gateway_model_request_seconds``: the wait for the model, then the answer).
        404 for a model not in ``family``; the coordinator's 429/503/504 while waiting for it."""
        spec = self.spec(model_id, family)  # 404 before a metric label is made of an unknown id
        client = self.client(spec)
        upstream = Upstream(self, spec, client, lane=lane, timeout_s=timeout_s or self.request_timeout_s)
        t0 = time.perf_counter()
        outcome = "error"
        try:
            if self.pulls is not None:  # a download, if any, comes out of the request's time
                await self.pulls.ensure_cached(spec, upstream.timeout_s)
                upstream.timeout_s = max(1.0, upstream.timeout_s - (time.perf_counter() - t0))
            await upstream.acquire()
            yield upstream
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except UpstreamEnvelope as e:
            if e.status >= 500:
                self.metrics.upstream_errors.labels(client.name, "status_5xx").inc()
            raise
        except ServiceUnreachable:
            self.metrics.upstream_errors.labels(client.name, "unreachable").inc()
            self.coordinator.schedule_reconcile(family)
            raise
        except (DeadlineExceeded, UpstreamError) as e:
            if upstream.held:  # the service's, not the coordinator's (a wait for the model is not an upstream error)
                kind = "timeout" if isinstance(e, DeadlineExceeded) else "bad_response"
                self.metrics.upstream_errors.labels(client.name, kind).inc()
            raise
        finally:
            upstream.release()
            m = self.metrics
            m.series(m.model_request_seconds, family, model_id, lane, outcome).observe(time.perf_counter() - t0)

    async def load(self, model_id: str, request_id: str | None = None) -> AdminLoaded:
        """Load through the coordinator (it decides what to evict), then describe the model."""
        spec = self.spec(model_id)
        if self.pulls is not None:
            await self.pulls.ensure_cached(spec, self.request_timeout_s)
        await self.coordinator.acquire(model_id, lane=INTERACTIVE, timeout_s=self.request_timeout_s)
        try:
            body = await self.client(spec).models()
        finally:
            self.coordinator.release(model_id)
        row = next((m for m in body.data if m.id == model_id), None)
        if row is None:
            raise UpstreamError(f"{self.client(spec).name} loaded {model_id} but does not list it", code="bad_upstream_response")
        return AdminLoaded(**row.model_dump(), ledger=self.coordinator.model_state(model_id))

    async def unload(self, model_id: str, *, drain: bool, request_id: str | None = None) -> AdminUnloaded:
        """Unload through the coordinator: drained (409 ``model_in_use`` instead when ``drain`` is False and
        requests are in flight), unloaded, and answered once its release is verified."""
        self.spec(model_id)  # 404 for a model not in the catalog
        released = await self.coordinator.unload(model_id, drain=drain, timeout_s=self.request_timeout_s)
        if released is None:
            return AdminUnloaded(model=model_id, was_resident=False, freed_bytes=0, verified=True, seconds=0.0,
                                 worker_stopped=False, detail="not resident: nothing to release")
        return AdminUnloaded(model=model_id, was_resident=True, freed_bytes=released.freed_bytes, verified=released.verified,
                             seconds=round(released.seconds, 3), worker_stopped=released.worker_stopped,
                             detail=released.detail)
