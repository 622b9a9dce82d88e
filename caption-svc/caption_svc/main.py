"""caption-svc: ``create_app(settings)`` and the process entry point."""

from __future__ import annotations

from fastapi import FastAPI

from modelhost.app import Family, create_host_app, serve
from modelhost.catalog import CatalogError, load_catalog
from modelhost.decodes import DecodeSlots
from modelhost.meter import MemoryMeter

from .api import router
from .backends import BACKENDS
from .backends._weights import check_options, missing
from .config import CaptionSettings

FAMILY = Family(name="caption", service="caption-svc", backends=BACKENDS, missing=missing)


def create_app(settings: CaptionSettings | None = None, *, meter: MemoryMeter | None = None) -> FastAPI:
    settings = settings or CaptionSettings()
    catalog = load_catalog(settings.catalog)
    try:
        check_options(catalog.family(FAMILY.name).models)
    except ValueError as e:
        raise CatalogError(f"catalog file {settings.catalog} is invalid: {e}") from e
    app = create_host_app(FAMILY, settings, catalog, [router], meter=meter)
    app.state.decodes = DecodeSlots(settings.max_concurrent_decodes)  # the decode memory bound (modelhost.decodes)
    return app


def main() -> None:
    settings = CaptionSettings()
    serve(FAMILY, settings, create_app(settings))


if __name__ == "__main__":
    main()
