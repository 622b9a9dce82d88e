"""embed-svc: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

from fastapi import FastAPI

from modelhost.app import Family, create_host_app, serve
from modelhost.catalog import load_catalog
from modelhost.decodes import DecodeSlots
from modelhost.families.embed import FAMILY as FAMILY_NAME
from modelhost.families.embed import modalities
from modelhost.meter import MemoryMeter

from .api import router
from .backends import BACKENDS
from .config import EmbedSettings

FAMILY = Family(name=FAMILY_NAME, service="embed-svc", backends=BACKENDS)


def create_app(settings: EmbedSettings | None = None, *, meter: MemoryMeter | None = None) -> FastAPI:
    settings = settings or EmbedSettings()
    catalog = load_catalog(settings.catalog)
    for spec in catalog.models:
        if spec.family == FAMILY_NAME:
            try:
                modalities(spec.options)  # a bad catalog option fails the start, not a request
            except ValueError as e:
                raise ValueError(f"model {spec.id!r}: {e}") from None
    app = create_host_app(FAMILY, settings, catalog, [router], meter=meter)
    app.state.decodes = DecodeSlots(settings.max_concurrent_decodes)  # the decode memory bound (modelhost.decodes)
    return app


def main() -> None:
    settings = EmbedSettings()
    serve(FAMILY, settings, create_app(settings))


if __name__ == "__main__":
    main()
