"""asr-svc: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

from fastapi import FastAPI

from modelhost.app import Family, create_host_app, serve
from modelhost.catalog import load_catalog
from modelhost.decodes import DecodeSlots
from modelhost.meter import MemoryMeter

from .api import router
from .backends import BACKENDS
from .config import AsrSettings

FAMILY = Family(name="asr", service="asr-svc", backends=BACKENDS)


def create_app(settings: AsrSettings | None = None, *, meter: MemoryMeter | None = None) -> FastAPI:
    settings = settings or AsrSettings()
    app = create_host_app(FAMILY, settings, load_catalog(settings.catalog), [router], meter=meter)
    app.state.decodes = DecodeSlots(settings.max_concurrent_decodes)  # the decode memory bound (modelhost.decodes)
    return app


def main() -> None:
    settings = AsrSettings()
    serve(FAMILY, settings, create_app(settings))


if __name__ == "__main__":
    main()
