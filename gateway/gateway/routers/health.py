"""Liveness, readiness and the Prometheus metrics: unauthenticated, for orchestrators and scrapers."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from modelhost.errors import RoundhouseError

from ..state import gw

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok when every configured family service is ready.")
    services: dict[str, str] = Field(description="Per family: ready, or down with the reason.")


@router.get("/health/live", response_model=Liveness, summary="The gateway process answers")
async def live() -> Liveness:
    return Liveness()


@router.get("/health/ready", response_model=Readiness, summary="Every configured family service is ready (503 otherwise)",
            responses={503: {"model": Readiness, "description": "A family service is down (Retry-After)."}})
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
    body = Readiness(status="ok" if not down else "degraded",
                     services={f: ("ready" if err is None else f"down: {err}") for f, err in results.items()})
    return JSONResponse(body.model_dump(), status_code=200 if not down else 503,
                        headers={} if not down else {"Retry-After": "5"})


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (the text exposition format)")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(gw(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
