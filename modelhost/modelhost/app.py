"""``create_host_app``: the model host API every family service gets for free.

    GET  /health/live                 the process answers
    GET  /health/ready                the runtime is started (models load on demand) and its worker, if
                                      any, was heard from lately (503 worker_unresponsive otherwise)
    GET  /metrics                     Prometheus text
    GET  /v1/models                   every catalog model of this family, with its state
    POST /v1/models/{name}/load       returns when READY (coalesced), with measured memory; 503
                                      model_unavailable when something it needs is missing here
    POST /v1/models/{name}/unload     returns when released, with freed bytes; ?drain=true waits
    POST /v1/models/{name}/park       weights to host memory in the live worker (``modelhost.park``), or an
                                      unload where it cannot park; the next load un-parks it
    POST /v1/models/{name}/pull       fetch its weights into the cache, outside the worker (``pulls``)
    GET  /v1/models/{name}/pull       that pull's progress: bytes, total, rate, ETA
    DELETE /v1/models/{name}/cache    remove its downloaded weights (409 while loaded)

A family adds its inference routes with an ``APIRouter`` and reaches the runtime through
``host(request)``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from fastapi import APIRouter, FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware

from .auth import InternalTokenMiddleware
from .catalog import Catalog, ModelSpec
from .contract import CacheDeleted, DeviceMemory, ModelRow, ModelsReply, ParkReply, PullStatus, ReadyReply, UnloadReply
from .cuda import check_cuda_driver
from .errors import REQUEST_ID_HEADER, Unavailable, install_error_handlers, request_id_of
from .meter import MemoryMeter, MeterError, open_meter
from .metrics import HostMetrics
from .pulls import Pulls
from .runtime import ModelRuntime
from .settings import HostSettings
from .states import ModelState, ModelUnavailable
from .wire import BodyTimeoutMiddleware
from .wire import serve as serve_wire

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """What a family service tells the kit about itself."""

    name: str  # caption, face, asr, tts
    service: str  # compose service name, used as the envelope's src: caption-svc
    backends: dict[str, str]  # backend name -> "package.module:Class" (imported in the worker only)
    version: str = "0.1.0"
    missing: Callable[[ModelSpec], str | None] | None = None
    """What a model needs that this machine lacks ("flite is not installed: apt-get install flite"), or
    None. Asked in the HTTP process at every look, so it must be cheap and import no backend."""


@dataclass
class Host:
    family: Family
    settings: HostSettings
    catalog: Catalog
    runtime: ModelRuntime
    metrics: HostMetrics
    meter: MemoryMeter
    started_at: float
    pulls: Pulls | None = None


def host(request: Request) -> Host:
    return request.app.state.host


def missing_for(h: Host, name: str) -> str | None:
    """Why ``name`` cannot run on this machine (404 for a model not in the catalog), or None."""
    spec = h.runtime.entry(name).spec
    return h.family.missing(spec) if h.family.missing is not None else None


def check_available(h: Host, name: str) -> None:
    """503 ``model_unavailable`` with the reason when ``name`` cannot run on this machine."""
    reason = missing_for(h, name)
    if reason is not None:
        raise ModelUnavailable(f"model {name} is unavailable: {reason}", param="model")


def _as_seen(h: Host, row: ModelRow) -> ModelRow:
    """A model at rest whose requirement is missing is shown ``unavailable``, with the reason."""
    if row.state not in (ModelState.UNLOADED.value, ModelState.FAILED.value):
        return row
    reason = missing_for(h, row.id)
    return row if reason is None else row.model_copy(update={"state": ModelState.UNAVAILABLE.value, "reason": reason})


def _gpu_index(settings: HostSettings, catalog: Catalog) -> int | None:
    if settings.gpu_index is not None:
        return settings.gpu_index
    for m in catalog.models:
        if m.wants_gpu:
            return int(m.device.split(":")[1]) if ":" in m.device else 0
    return None


def create_host_app(
    family: Family,
    settings: HostSettings,
    catalog: Catalog,
    routers: list[APIRouter] = (),  # type: ignore[assignment]
    *,
    meter: MemoryMeter | None = None,
) -> FastAPI:
    """Build a family service. ``meter`` is the hardware boundary: tests may pass their own."""
    own = catalog.family(family.name).on_device(settings.force_device)
    gpu_index = _gpu_index(settings, own)
    metrics = HostMetrics(family.name)
    the_meter = meter or open_meter(prefer_gpu=gpu_index is not None, gpu_index=gpu_index or 0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ModelRuntime(
            family=family.name, catalog=own, backends=family.backends, settings=settings,
            meter=the_meter, metrics=metrics, gpu_index=gpu_index,
        )
        check_cuda_driver(family.service, own)
        runtime.start()
        pulls = Pulls(own.models, settings.cache_dir)
        app.state.host = Host(family, settings, own, runtime, metrics, the_meter, time.time(), pulls)
        log.info("%s ready: %d catalog model(s), measuring memory with %s",
                 family.service, len(runtime.entries), the_meter.kind)
        try:
            yield
        finally:
            await pulls.close()
            await runtime.close()

    app = FastAPI(title=family.service, version=family.version, lifespan=lifespan)
    install_error_handlers(app, family.service)
    app.add_middleware(_RequestIdMiddleware)
    app.add_middleware(BodyTimeoutMiddleware, idle_s=settings.body_read_timeout_s, src=family.service)
    token = settings.internal_token.get_secret_value() if settings.internal_token else None
    app.add_middleware(InternalTokenMiddleware, token=token, src=family.service)  # outermost: before any work

    @app.get("/health/live", tags=["health"])
    async def live() -> dict:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["health"], response_model=ReadyReply)
    async def ready(request: Request) -> ReadyReply:
        h = host(request)
        hung = h.runtime.workers.unresponsive()  # a worker not heard from (modelhost.worker's heartbeat)
        if hung is not None:
            raise Unavailable(hung, code="worker_unresponsive", retry_after_s=5)
        return ReadyReply(status="ok", family=family.name, models=len(h.runtime.entries), worker_pid=h.runtime.worker_pid)

    @app.get("/metrics", tags=["health"])
    async def metrics_route(request: Request) -> Response:
        h = host(request)
        for row in h.runtime.snapshot():  # unavailable is decided at every look (states.py): so at every scrape
            metrics.set_state(row.id, ModelState(_as_seen(h, row).state))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["models"], response_model=ModelsReply)
    async def list_models(request: Request) -> ModelsReply:
        h = host(request)
        # The models' states are the runtime's; a meter that cannot read the device (a lost GPU) must not
        # hide them, or the gateway would take a live service for one that lost its models.
        device, worker_bytes, meter_error = None, 0, None
        try:
            d = h.meter.device()
            device = DeviceMemory(device=d.device, total_bytes=d.total_bytes, used_bytes=d.used_bytes)
            worker_bytes = h.meter.process_bytes(h.runtime.worker_pid) if h.runtime.worker_pid else 0
        except MeterError as e:
            meter_error = str(e)
        return ModelsReply(
            family=family.name, service=family.service, worker_pid=h.runtime.worker_pid,
            worker_memory_bytes=worker_bytes, spare=h.runtime.workers.spare_row(), meter=h.meter.kind, device=device,
            meter_error=meter_error, data=await h.pulls.annotate([_as_seen(h, row) for row in h.runtime.snapshot()]),
        )

    @app.post("/v1/models/{name}/load", tags=["models"], response_model=ModelRow)
    async def load(name: str, request: Request) -> ModelRow:
        h = host(request)
        check_available(h, name)
        entry = await h.runtime.ensure_ready(name)
        return h.runtime.describe(entry)

    @app.post("/v1/models/{name}/unload", tags=["models"], response_model=UnloadReply)
    async def unload(name: str, request: Request, drain: bool = Query(False, description="Wait for in-flight requests instead of answering 409.")) -> UnloadReply:
        h = host(request)
        return await h.runtime.unload(name, drain=drain)

    @app.post("/v1/models/{name}/park", tags=["models"], response_model=ParkReply)
    async def park(name: str, request: Request) -> ParkReply:
        return await host(request).runtime.park(name)

    @app.post("/v1/models/{name}/pull", tags=["models"], response_model=PullStatus)
    async def pull(name: str, request: Request,
                   wait: bool = Query(False, description="Answer when the pull has ended instead of at once.")) -> PullStatus:
        h = host(request)
        status = await h.pulls.start(name)
        return await h.pulls.wait(name) if wait else status

    @app.get("/v1/models/{name}/pull", tags=["models"], response_model=PullStatus)
    async def pull_status(name: str, request: Request) -> PullStatus:
        return await host(request).pulls.status(name)

    @app.delete("/v1/models/{name}/cache", tags=["models"], response_model=CacheDeleted)
    async def delete_cache(name: str, request: Request) -> CacheDeleted:
        h = host(request)
        loaded = name in h.runtime.entries and h.runtime.entries[name].state not in (ModelState.UNLOADED, ModelState.FAILED)
        return await h.pulls.delete(name, loaded=loaded)

    for router in routers:
        app.include_router(router)
    return app


class _RequestIdMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):  # noqa: ANN001, ANN201
        rid = request_id_of(request)
        response = await call_next(request)
        response.headers.setdefault(REQUEST_ID_HEADER, rid)
        return response


def serve(family: Family, settings: HostSettings, app: FastAPI) -> None:
    """A family service's process entry point: logging, one line saying where, then uvicorn."""
    from .logs import setup_logging

    setup_logging(settings.log_level)
    log.info("%s on %s:%d, catalog %s", family.service, settings.host, settings.port, settings.catalog)
    serve_wire(app, src=family.service, host=settings.host, port=settings.port, log_level=settings.log_level)
