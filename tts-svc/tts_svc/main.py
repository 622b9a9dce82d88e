"""tts-svc: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

from fastapi import FastAPI

from modelhost.app import Family, create_host_app, serve
from modelhost.catalog import load_catalog
from modelhost.meter import MemoryMeter

from .api import router
from .backends import BACKENDS
from .config import TtsSettings
from .voices import missing

FAMILY = Family(name="tts", service="tts-svc", backends=BACKENDS, missing=missing)


def create_app(settings: TtsSettings | None = None, *, meter: MemoryMeter | None = None) -> FastAPI:
    settings = settings or TtsSettings()
    return create_host_app(FAMILY, settings, load_catalog(settings.catalog), [router], meter=meter)


def main() -> None:
    settings = TtsSettings()
    serve(FAMILY, settings, create_app(settings))


if __name__ == "__main__":
    main()
