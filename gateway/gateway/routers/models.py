"""GET /v1/models (OpenAI-shaped) and the admin views of models."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request

from modelhost.contract import ModelRow, ModelsReply
from modelhost.errors import RoundhouseError, request_id_of

from ..schemas import AdminModel, AdminModels, ModelCard, ModelList
from ..state import gw

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, tags=["models"], summary="List catalog models (OpenAI-compatible)")
async def list_models(request: Request) -> ModelList:
    g = gw(request)
    created = int(g.started_at)
    return ModelList(data=[ModelCard(id=m.id, created=created, family=m.family, backend=m.backend) for m in g.catalog.models])


@router.get("/admin/models", response_model=AdminModels, tags=["admin"], summary="Every model's state, memory and use (like `ollama ps`)")
async def admin_models(request: Request) -> AdminModels:
    g = gw(request)

    async def fetch(family: str) -> tuple[str, ModelsReply | None, str | None]:
        try:
            return family, await g.clients[family].models(), None
        except RoundhouseError as e:
            g.metrics.upstream_errors.labels(g.clients[family].name, "models").inc()
            return family, None, e.message

    answers = await asyncio.gather(*(fetch(f) for f in g.clients))
    live: dict[str, ModelRow] = {}
    services: dict[str, Any] = {}
    for family, body, error in answers:
        services[family] = {"url": g.clients[family].base_url, "reachable": body is not None, "error": error}
        if body is not None:
            services[family].update(worker_pid=body.worker_pid, worker_memory_bytes=body.worker_memory_bytes,
                                    meter=body.meter, device=body.device.model_dump())
            for m in body.data:
                live[m.id] = m
    rows = []
    for spec in g.catalog.models:
        m = live.get(spec.id)
        ledger = g.coordinator.model_state(spec.id)
        rows.append(AdminModel(
            id=spec.id, family=spec.family,
            service=g.clients[spec.family].name if spec.family in g.clients else "not configured",
            device_requested=spec.device, memory_estimate_bytes=spec.memory_estimate_bytes, **_as_served(m),
            queue_depth=ledger["queue_depth"] + (m.queue_depth if m else 0),
            ledger_state=ledger["ledger_state"], device_ledger=ledger["device_ledger"], ttl_s=spec.ttl_s,
            pin=spec.pin, priority=spec.priority, group=spec.group,
        ))
    return AdminModels(data=rows, services=services)


_SERVED = {"state", "reason", "device", "memory_bytes", "peak_memory_bytes", "load_s", "last_used", "in_flight"}


def _as_served(row: ModelRow | None) -> dict[str, Any]:
    """What the model's service says of it; state "unknown" when the service did not answer."""
    return row.model_dump(include=_SERVED) if row is not None else {"state": "unknown"}


@router.post("/admin/models/{model_id}/load", tags=["admin"], summary="Load a model now; returns when it is ready")
async def admin_load(model_id: str, request: Request) -> dict[str, Any]:
    g = gw(request)
    return await g.access.load(model_id, request_id=request_id_of(request))


@router.post("/admin/models/{model_id}/unload", tags=["admin"], summary="Unload a model; returns when its memory is released")
async def admin_unload(
    model_id: str, request: Request,
    drain: bool = Query(False, description="Wait for requests in flight instead of answering 409."),
) -> dict[str, Any]:
    g = gw(request)
    return await g.access.unload(model_id, drain=drain, request_id=request_id_of(request))


@router.get("/admin/gpu", tags=["admin"], summary="The coordinator's ledger per device, beside the meter's truth")
async def admin_gpu(request: Request) -> dict[str, Any]:
    g = gw(request)
    view = g.coordinator.view()
    for dev, ledger in view.items():
        meter = g.meters.get(dev)
        if meter is None:
            from modelhost.meter import HostMeter

            truth = HostMeter().device()
            ledger["meter"] = {"kind": "host", "total_bytes": truth.total_bytes, "used_bytes": truth.used_bytes}
        else:
            truth = meter.device()
            ledger["meter"] = {"kind": meter.kind, "total_bytes": truth.total_bytes, "used_bytes": truth.used_bytes,
                               "free_bytes": truth.free_bytes}
    return {"devices": view, "unverified_releases": g.coordinator.unverified_releases}
