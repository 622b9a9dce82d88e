"""The seam between public routes and family services: every model request passes through
``ModelAccess.use(model_id)``.

Today it loads a model on demand through the service's load endpoint (concurrent first requests
for one model share one load call) and, when a service says a model is not ready (it was unloaded
by its TTL reaper, or the service restarted), loads it again and retries once. The swap coordinator
(a later issue) replaces this class behind the same ``use`` contract: it will decide *when* a load
may happen and what must be evicted first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

from modelhost.catalog import Catalog, ModelSpec
from modelhost.client import ModelHostClient, ServiceUnreachable, UpstreamEnvelope
from modelhost.errors import ModelNotFound, RoundhouseError, Unavailable

from .metrics import GatewayMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelAccess:
    def __init__(
        self,
        catalog: Catalog,
        clients: dict[str, ModelHostClient],
        metrics: GatewayMetrics,
        *,
        load_timeout_s: float,
    ) -> None:
        self.catalog = catalog
        self.clients = clients
        self.metrics = metrics
        self.load_timeout_s = load_timeout_s
        self._ready: set[str] = set()  # models we believe loaded; a 503 from the service corrects it
        self._loading: dict[str, asyncio.Task] = {}

    def spec(self, model_id: str, family: str | None = None) -> ModelSpec:
        spec = self.catalog.get(model_id)
        if spec is None or (family is not None and spec.family != family):
            known = [m.id for m in self.catalog.models if family is None or m.family == family]
            raise ModelNotFound(f"model {model_id!r} is not in the catalog{f' for {family}' if family else ''}; known: {known}", param="model")
        return spec

    def client(self, spec: ModelSpec) -> ModelHostClient:
        client = self.clients.get(spec.family)
        if client is None:
            raise Unavailable(f"no {spec.family} service is configured (GATEWAY_SERVICES)", code="service_not_configured")
        return client

    async def use(self, model_id: str, family: str, call: Callable[[ModelHostClient], Awaitable[T]]) -> T:
        """Make sure ``model_id`` is loaded, then run ``call`` against its service."""
        spec = self.spec(model_id, family)
        client = self.client(spec)
        if model_id not in self._ready:
            await self.load(model_id)
        try:
            return await call(client)
        except UpstreamEnvelope as e:
            if e.code != "model_not_ready":
                raise
            log.info("model %s was not ready at %s (%s); loading it again", model_id, client.name, e.message)
            self._ready.discard(model_id)
            await self.load(model_id)
            return await call(client)
        except ServiceUnreachable:
            self._ready.discard(model_id)
            self.metrics.upstream_errors.labels(client.name, "unreachable").inc()
            raise

    async def load(self, model_id: str, request_id: str | None = None) -> dict[str, Any]:
        """Load through the service; concurrent callers share one call."""
        spec = self.spec(model_id)
        task = self._loading.get(model_id)
        if task is None:
            task = asyncio.create_task(self._load(spec, request_id), name=f"gateway-load-{model_id}")
            self._loading[model_id] = task
            task.add_done_callback(lambda _t, m=model_id: self._loading.pop(m, None))
        return await asyncio.shield(task)

    async def _load(self, spec: ModelSpec, request_id: str | None) -> dict[str, Any]:
        client = self.client(spec)
        t0 = time.perf_counter()
        try:
            info = await client.load(spec.id, timeout_s=self.load_timeout_s, request_id=request_id)
        except RoundhouseError:
            self.metrics.model_loads.labels(spec.id, "failed").inc()
            raise
        self.metrics.model_loads.labels(spec.id, "loaded").inc()
        self.metrics.model_load_seconds.labels(spec.id).observe(time.perf_counter() - t0)
        self._ready.add(spec.id)
        return info

    async def unload(self, model_id: str, *, drain: bool, request_id: str | None = None) -> dict[str, Any]:
        spec = self.spec(model_id)
        self._ready.discard(model_id)
        return await self.client(spec).unload(model_id, drain=drain, timeout_s=self.load_timeout_s, request_id=request_id)
