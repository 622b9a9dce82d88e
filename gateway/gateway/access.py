"""The seam between public routes and family services: every model request passes through
``ModelAccess.use(model_id, family, call)``.

It asks the swap coordinator for the model (which loads it, evicting others if needed, and queues
the request meanwhile), runs ``call`` against the model's service, and releases the model. When a
service says a model is not ready (its TTL reaper unloaded it, or the service restarted), the
coordinator is told, re-reads the service, and the request is tried once more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

from modelhost.catalog import Catalog, ModelSpec
from modelhost.client import ModelHostClient, ServiceUnreachable, UpstreamEnvelope
from modelhost.errors import DeadlineExceeded, ModelNotFound, Unavailable, UpstreamError

from .coordinator.loop import Coordinator
from .coordinator.policy import INTERACTIVE
from .metrics import GatewayMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelAccess:
    def __init__(self, catalog: Catalog, clients: dict[str, ModelHostClient], metrics: GatewayMetrics,
                 coordinator: Coordinator, *, request_timeout_s: float) -> None:
        self.catalog = catalog
        self.clients = clients
        self.metrics = metrics
        self.coordinator = coordinator
        self.request_timeout_s = request_timeout_s

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

    async def use(self, model_id: str, family: str, call: Callable[[ModelHostClient], Awaitable[T]],
                  *, lane: str = INTERACTIVE, timeout_s: float | None = None) -> T:
        """Hold ``model_id`` resident while ``call`` runs against its service; timed per family
        (``roundhouse_gateway_model_request_seconds``: the wait for the model, then the answer)."""
        self.spec(model_id, family)  # 404 before a metric label is made of an unknown id
        t0 = time.perf_counter()
        outcome = "error"
        try:
            result = await self._use(model_id, family, call, lane=lane, timeout_s=timeout_s)
            outcome = "ok"
            return result
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.metrics.model_request_seconds.labels(family, model_id, lane, outcome).observe(time.perf_counter() - t0)

    async def _use(self, model_id: str, family: str, call: Callable[[ModelHostClient], Awaitable[T]],
                   *, lane: str, timeout_s: float | None) -> T:
        spec = self.spec(model_id, family)
        client = self.client(spec)
        timeout = timeout_s or self.request_timeout_s
        for attempt in (1, 2):
            await self.coordinator.acquire(model_id, lane=lane, timeout_s=timeout)
            try:
                return await call(client)
            except UpstreamEnvelope as e:
                if e.code != "model_not_ready" or attempt == 2:
                    if e.status >= 500:
                        self.metrics.upstream_errors.labels(client.name, "status_5xx").inc()
                    raise
                log.info("model %s was not ready at %s (%s); telling the coordinator and retrying", model_id, client.name, e.message)
                self.coordinator.vanished(model_id)
            except ServiceUnreachable:
                self.metrics.upstream_errors.labels(client.name, "unreachable").inc()
                self.coordinator.schedule_reconcile(family)
                raise
            except (DeadlineExceeded, UpstreamError) as e:  # no answer in time, or one without an envelope
                kind = "timeout" if isinstance(e, DeadlineExceeded) else "bad_response"
                self.metrics.upstream_errors.labels(client.name, kind).inc()
                raise
            finally:
                self.coordinator.release(model_id)
        raise AssertionError("unreachable")  # pragma: no cover

    async def load(self, model_id: str, request_id: str | None = None) -> dict[str, Any]:
        """Load through the coordinator (it decides what to evict), then describe the model."""
        spec = self.spec(model_id)
        await self.coordinator.acquire(model_id, lane=INTERACTIVE, timeout_s=self.request_timeout_s)
        try:
            body = await self.client(spec).models()
        finally:
            self.coordinator.release(model_id)
        row = next((m for m in body.get("data", []) if m["id"] == model_id), {"id": model_id})
        return {**row, **self.coordinator.model_state(model_id)}

    async def unload(self, model_id: str, *, drain: bool, request_id: str | None = None) -> dict[str, Any]:
        """Unload at the service now (409 there if in use and not draining) and correct the ledger."""
        spec = self.spec(model_id)
        reply = await self.client(spec).unload(model_id, drain=drain, timeout_s=self.request_timeout_s, request_id=request_id)
        self.coordinator.vanished(model_id)
        return reply
