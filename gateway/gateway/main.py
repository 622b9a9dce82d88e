"""The gateway: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import AsyncIterator

import uvicorn
from fastapi import FastAPI

from modelhost.catalog import load_catalog
from modelhost.client import ModelHostClient, new_session
from modelhost.errors import install_error_handlers
from modelhost.logs import setup_logging

from .access import ModelAccess
from .auth import ApiKeyMiddleware
from .config import GatewaySettings
from .metrics import GatewayMetrics
from .observe import ObserveMiddleware
from .routers import captions, health, models
from .state import Gateway

log = logging.getLogger(__name__)

SERVICE_NAMES = {"caption": "caption-svc", "face": "face-svc", "asr": "asr-svc", "tts": "tts-svc"}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    catalog = load_catalog(settings.catalog)
    metrics = GatewayMetrics()
    missing = sorted(set(catalog.families) - set(settings.services))
    if missing:
        log.warning("catalog families without a service URL (requests to them get 503): %s", ", ".join(missing))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = new_session()
        clients = {family: ModelHostClient(SERVICE_NAMES.get(family, f"{family}-svc"), url, session)
                   for family, url in settings.services.items()}
        access = ModelAccess(catalog, clients, metrics, load_timeout_s=settings.load_timeout_s)
        app.state.gateway = Gateway(settings, catalog, metrics, session, clients, access, time.time())
        log.info("gateway on %s:%d: %d model(s), services %s, auth %s", settings.host, settings.port,
                 len(catalog.models), settings.services, "on" if settings.api_keys else "OFF (no GATEWAY_API_KEYS)")
        try:
            yield
        finally:
            await session.close()

    app = FastAPI(
        title="Roundhouse",
        version="0.1.0",
        description="Many model families on one GPU box: captions, faces, speech-to-text, text-to-speech.",
        lifespan=lifespan,
    )
    install_error_handlers(app, "gateway")
    for router in (health.router, models.router, captions.router):
        app.include_router(router)
    # Outermost last: ObserveMiddleware sees every answer, the 401s included.
    app.add_middleware(ApiKeyMiddleware, keys=[k.get_secret_value() for k in settings.api_keys])
    app.add_middleware(ObserveMiddleware, metrics=metrics)
    return app


def main() -> None:
    settings = GatewaySettings()
    setup_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), access_log=False)


if __name__ == "__main__":
    main()
