from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelhost.errors import RoundhouseError

from ..state import gw

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The gateway process answers")
async def live() -> dict:
    return {"status": "ok"}


@router.get("/health/ready", summary="Every configured family service is ready (503 otherwise)")
async def ready(request: Request) -> JSONResponse:
    g = gw(request)

    async def probe(family: str) -> tuple[str, str | None]:
        try:
            await g.clients[family].ready()
            return family, None
        except RoundhouseError as e:
            return family, e.message

    results = dict(await asyncio.gather(*(probe(f) for f in g.clients)))
    down = {f: err for f, err in results.items() if err is not None}
    body = {"status": "ok" if not down else "degraded",
            "services": {f: ("ready" if err is None else f"down: {err}") for f, err in results.items()}}
    return JSONResponse(body, status_code=200 if not down else 503, headers={} if not down else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(gw(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
