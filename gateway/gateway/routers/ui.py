"""The web console: static files under /ui (gateway/ui/static: plain HTML, CSS and ES modules, no build
step), and / redirecting there. The shell is public; every data call it makes goes to the API with the
key the page asks for when GATEWAY_API_KEYS is set (kept in sessionStorage, sent as a Bearer header)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "ui" / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
async def ui() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
