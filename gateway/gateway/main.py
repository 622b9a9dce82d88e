"""The gateway: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import AsyncIterator

from fastapi import FastAPI

from modelhost.catalog import load_catalog
from modelhost.client import ModelHostClient, new_session
from modelhost.errors import install_error_handlers
from modelhost.logs import setup_logging
from modelhost.meter import MemoryMeter
from modelhost.wire import BodyTimeoutMiddleware, serve

from .access import ModelAccess
from .auth import ApiKeyMiddleware
from .budgets import memory_budgets, open_meters
from .config import CoordinatorSettings, GatewaySettings, JobSettings
from .coordinator.effects import HttpEffects
from .coordinator.footprints import FootprintStore
from .coordinator.loop import Coordinator
from .coordinator.policy import PolicyConfig
from .events import EventHub
from .events_sources import CoordinatorObserver, JobProgress
from .gpu_metrics import GpuCollector
from .jobs.service import Jobs
from .metrics import GatewayMetrics
from .observe import ObserveMiddleware
from .preload import preload
from .routes import DirectApp
from .pulls import Pulls
from .routers import audio_speech, audio_transcriptions, captions, embeddings, faces, health, models, openai
from .routers import events as events_router
from .routers import jobs as jobs_router
from .routers import pulls as pulls_router
from .routers import search as search_router
from .search.service import Search
from .routers import ui as ui_router
from .state import Gateway
from .tenants import Tenants

log = logging.getLogger(__name__)

# On SIGTERM, requests still in flight get this long before they are cancelled. Without a bound, one open
# server-sent events stream (the console's GET /admin/events, a job's events) kept the gateway from ever
# stopping; compose sends SIGKILL 10 s after SIGTERM anyway.
SHUTDOWN_GRACE_S = 5

SERVICE_NAMES = {"caption": "caption-svc", "face": "face-svc", "asr": "asr-svc", "tts": "tts-svc"}


def create_app(settings: GatewaySettings | None = None, coordinator_settings: CoordinatorSettings | None = None,
               *, meters: dict[str, MemoryMeter | None] | None = None, job_settings: JobSettings | None = None) -> FastAPI:
    """Build the gateway. ``meters`` is the hardware boundary (NVML per GPU); tests may pass their own."""
    settings = settings or GatewaySettings()
    cs = coordinator_settings or CoordinatorSettings()
    js = job_settings or JobSettings()
    catalog = load_catalog(settings.catalog).on_device(settings.force_device)
    metrics = GatewayMetrics()
    metrics.init_labels([m.id for m in catalog.models], [SERVICE_NAMES.get(f, f"{f}-svc") for f in settings.services])
    metrics.registry.register(GpuCollector())  # NVML read at scrape time; roundhouse_gpu_nvml_available 0 without it
    missing = sorted({m.family for m in catalog.models if not m.tenant} - set(settings.services))
    if missing:
        log.warning("catalog families without a service URL (requests to them get 503): %s", ", ".join(missing))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = new_session()
        token = settings.internal_token.get_secret_value() if settings.internal_token else None
        clients = {family: ModelHostClient(SERVICE_NAMES.get(family, f"{family}-svc"), url, session, internal_token=token)
                   for family, url in settings.services.items()}
        tenants = Tenants.build(catalog, session)  # the servers of the llm models (Ollama, llama-swap, http)
        metrics.init_labels([], tenants.names)
        the_meters = meters if meters is not None else open_meters(catalog)
        budgets = memory_budgets(catalog, cs, the_meters)
        effects = HttpEffects(clients, the_meters, load_timeout_s=settings.load_timeout_s,
                              release_timeout_s=cs.release_timeout_s, tenants=tenants)
        policy = PolicyConfig(max_wait_s=cs.max_wait_s, interactive_patience_s=cs.interactive_patience_s,
                              bulk_patience_s=cs.bulk_patience_s, idle_grace_s=cs.idle_grace_s, swap_batch=cs.swap_batch)
        coordinator = Coordinator(catalog, effects, budgets, FootprintStore(cs.data_dir / "footprints.json"),
                                  config=policy, max_queue=cs.max_queue, metrics=metrics,
                                  reserve_bytes=cs.gpu_reserve_mb * 2**20, meter_interval_s=cs.meter_interval_s)
        await coordinator.reconcile_all()
        coordinator.listeners.append(CoordinatorObserver(hub).seeded(coordinator.cores))  # GET /admin/events
        coordinator.start()  # reads the GPUs' meters every meter_interval_s: memory not ours, the room left
        reconciler = asyncio.create_task(_reconcile_forever(coordinator, cs.reconcile_interval_s)) \
            if cs.reconcile_interval_s else None
        access = ModelAccess(catalog, clients, metrics, coordinator, request_timeout_s=settings.request_timeout_s,
                             tenants=tenants)
        # Weights are pulled ahead of a load, outside the swap slot (gateway.pulls): the admin routes and the gate.
        access.pulls = app.state.pulls = Pulls(catalog, clients, coordinator)
        app.state.gateway = Gateway(settings, catalog, metrics, session, clients, access, time.time(),
                                    coordinator, the_meters)
        # Bulk jobs: their database and uploads live beside the footprints, in the data directory.
        jobs = Jobs.build(cs.data_dir, js, settings, access=access, catalog=catalog, coordinator=coordinator, metrics=metrics)
        app.state.jobs = jobs
        job_progress = JobProgress(hub, jobs.status)
        jobs.runner.events.listeners.append(job_progress.notify)
        job_progress.start()
        await jobs.start()
        # Photo search: the vectors of ended embed jobs, kept in step with the jobs database.
        search = Search.build(cs.data_dir, jobs.store, access=access, catalog=catalog, settings=settings,
                              registry=metrics.registry)
        jobs.on_deleted.append(search.forget)
        app.state.search = search
        await search.start()
        # The catalog's preload models, loaded in the background now that the ledger is read (gateway.preload).
        preloader = asyncio.create_task(preload(catalog, coordinator, access), name="preload")
        log.info("coordinator budgets: %s", {d: f"{b / 2**20:.0f} MiB" for d, b in budgets.items()})
        log.info("gateway on %s:%d: %d model(s), services %s, tenants %s, auth %s", settings.host, settings.port,
                 len(catalog.models), settings.services, tenants.names or "none",
                 "on" if settings.api_keys else "OFF (no GATEWAY_API_KEYS)")
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.cancel()
            preloader.cancel()
            await app.state.pulls.close()
            await job_progress.close()
            await jobs.close()
            await search.close()
            await coordinator.close()
            for client in clients.values():
                client.close()
            await session.close()

    app = DirectApp(
        title="Roundhouse",
        version="0.1.0",
        description="Many model families on one GPU box: captions, faces, speech-to-text, text-to-speech, and the "
                    "OpenAI routes of the LLM servers (Ollama, llama-swap) that share the GPU.",
        lifespan=lifespan,
        # The gateway exports its own Prometheus metrics; FastAPI's OpenTelemetry probe costs every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app, "gateway")
    hub = app.state.events = EventHub(metrics=metrics)  # the one live events stream: GET /admin/events, the console
    # The inference routes first: they are the hot path, matched on every request.
    for router in (captions.router, faces.router, audio_speech.router, audio_transcriptions.router,
                   openai.router, embeddings.router, search_router.router, models.router, health.router):
        app.include_router(router)
    app.include_router(jobs_router.router)
    app.include_router(pulls_router.router)
    app.include_router(events_router.router)
    ui_router.install(app)  # /ui: the web console; / redirects there
    # Outermost last: ObserveMiddleware sees every answer, the 401s included.
    app.add_middleware(BodyTimeoutMiddleware, idle_s=settings.body_read_timeout_s, src="gateway")
    app.add_middleware(ApiKeyMiddleware, keys=[k.get_secret_value() for k in settings.api_keys])
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    return app


async def _reconcile_forever(coordinator: Coordinator, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await coordinator.reconcile_all()


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level)
    app = create_app(settings)
    # The modules and the app live as long as the process: out of the collector's sight, so that a full
    # collection scans only what requests made (it took 70-140 ms under load, the event loop stopped).
    gc.collect()
    gc.freeze()
    serve(app, src="gateway", host=settings.host, port=settings.port, log_level=settings.log_level,
          graceful_s=SHUTDOWN_GRACE_S)


if __name__ == "__main__":
    main()
