"""asr-svc: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from modelhost.app import Family, create_host_app
from modelhost.catalog import load_catalog
from modelhost.logs import setup_logging
from modelhost.meter import MemoryMeter

from .api import router
from .backends import BACKENDS
from .config import AsrSettings

FAMILY = Family(name="asr", service="asr-svc", backends=BACKENDS)


def create_app(settings: AsrSettings | None = None, *, meter: MemoryMeter | None = None) -> FastAPI:
    settings = settings or AsrSettings()
    return create_host_app(FAMILY, settings, load_catalog(settings.catalog), [router], meter=meter)


def main() -> None:
    settings = AsrSettings()
    setup_logging(settings.log_level)
    logging.getLogger(__name__).info("asr-svc on %s:%d, catalog %s", settings.host, settings.port, settings.catalog)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False)


if __name__ == "__main__":
    main()
