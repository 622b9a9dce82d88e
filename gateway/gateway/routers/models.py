"""GET /v1/models (OpenAI-shaped) and the admin views and actions of models."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient
from modelhost.contract import ModelRow, ModelsReply
from modelhost.errors import NotFound, RoundhouseError, error_responses, request_id_of
from modelhost.meter import HostMeter, MeterError

from ..coordinator.views import MeterReading
from ..schemas import AdminGpu, AdminLoaded, AdminModel, AdminModels, AdminService, AdminUnloaded, ModelCard, ModelList
from ..state import Gateway, gw

router = APIRouter()


@router.get("/v1/models", response_model=ModelList, tags=["models"], summary="List catalog models (OpenAI-compatible)",
            description="Every model of the catalog: those of Roundhouse's own services (`owned_by` roundhouse) and "
                        "those of the LLM servers it shares the GPU with (family llm, `owned_by` the server: ollama, "
                        "llama-swap, http), whose OpenAI routes it proxies.",
            responses=error_responses(401))
async def list_models(request: Request) -> ModelList:
    g = gw(request)
    created = int(g.started_at)
    return ModelList(data=[ModelCard(id=m.id, created=created, family=m.family, backend=m.backend,
                                     owned_by=m.backend if m.tenant else "roundhouse") for m in g.catalog.models])


@router.get("/admin/models", response_model=AdminModels, tags=["admin"],
            summary="Every model's state, memory and use (like `ollama ps`)", responses=error_responses(401))
async def admin_models(request: Request) -> AdminModels:
    g = gw(request)

    # Each family service, and each server of external tenants (by its name: one Ollama serves several models).
    servers: dict[str, ModelHostClient] = {**g.clients, **{t.name: t for t in g.access.tenants.clients}}

    async def fetch(key: str) -> tuple[str, ModelsReply | None, str | None]:
        try:
            return key, await servers[key].models(), None
        except RoundhouseError as e:
            g.metrics.upstream_errors.labels(servers[key].name, "models").inc()
            return key, None, e.message

    answers = await asyncio.gather(*(fetch(k) for k in servers))
    live: dict[str, ModelRow] = {}
    services: dict[str, AdminService] = {}
    for key, body, error in answers:
        url = servers[key].base_url
        if body is None:
            services[key] = AdminService(url=url, reachable=False, error=error)
            continue
        services[key] = AdminService(url=url, reachable=True, worker_pid=body.worker_pid,
                                     worker_memory_bytes=body.worker_memory_bytes, meter=body.meter, device=body.device,
                                     spare=body.spare, error=body.meter_error)
        live.update((m.id, m) for m in body.data)
    rows = []
    for spec in g.catalog.models:
        m = live.get(spec.id)
        ledger = g.coordinator.model_state(spec.id)
        rows.append(AdminModel(
            id=spec.id, family=spec.family,
            service=_server(g, spec),
            device_requested=spec.device, memory_estimate_bytes=spec.memory_estimate_bytes,
            **_as_served(m, g.coordinator.unavailable.get(spec.id)),
            queue_depth=ledger.queue_depth + (m.queue_depth if m else 0),
            ledger_state=ledger.ledger_state, device_ledger=ledger.device_ledger, charged_bytes=ledger.charged_bytes,
            ttl_s=spec.ttl_s, pin=spec.pin, priority=spec.priority, group=spec.group, preload=spec.preload,
        ))
    return AdminModels(data=rows, services=services)


def _server(g: Gateway, spec: ModelSpec) -> str:
    client = g.access.tenants.client(spec) or g.clients.get(spec.family)
    return client.name if client is not None else "not configured"


_SERVED = {"state", "reason", "device", "memory_bytes", "peak_memory_bytes", "load_s", "last_used", "in_flight",
           "cached", "size_on_disk_bytes", "parkable", "host_memory_bytes", "unpark_s"}


def _as_served(row: ModelRow | None, unavailable: str | None = None) -> dict:
    """What the model's service says of it; state "unknown" when the service did not answer; "unavailable"
    with the reason when the gateway has no device for it (a GPU that NVML does not see)."""
    if unavailable is not None:
        return {"state": "unavailable", "reason": unavailable}
    return row.model_dump(include=_SERVED) if row is not None else {"state": "unknown"}


@router.post("/admin/models/{model_id}/load", response_model=AdminLoaded, tags=["admin"],
             summary="Load a model now through the coordinator (it evicts others if needed); returns when it is ready",
             responses=error_responses(401, 404, 429, 502, 503, 504))
async def admin_load(model_id: str, request: Request) -> AdminLoaded:
    g = gw(request)
    return await g.access.load(model_id, request_id=request_id_of(request))


@router.post("/admin/models/{model_id}/unload", response_model=AdminUnloaded, tags=["admin"],
             summary="Unload a model through the coordinator; returns when its release is verified",
             description="The model gets no new requests; once those in flight finish it is unloaded and the answer "
                         "comes when its memory is released. Requests waiting for it stay queued and load it again "
                         "later. A model that is not resident is answered at once (`was_resident` false).",
             responses=error_responses(401, 404, 409, 502, 503, 504))
async def admin_unload(
    model_id: str, request: Request,
    drain: bool = Query(False, description="Wait for the requests in flight to finish instead of answering 409 model_in_use."),
) -> AdminUnloaded:
    g = gw(request)
    return await g.access.unload(model_id, drain=drain, request_id=request_id_of(request))


@router.get("/admin/gpu", response_model=AdminGpu, tags=["admin"],
            summary="The coordinator's ledger per device, beside the meter's truth", responses=error_responses(401))
async def admin_gpu(request: Request) -> AdminGpu:
    g = gw(request)
    devices = g.coordinator.view()
    for dev, ledger in devices.items():
        meter = g.meters.get(dev) or HostMeter()  # None: the device is the host
        try:
            truth = meter.device()
        except MeterError as e:  # a lost GPU is exactly when an operator looks here: show the ledger and why
            ledger.meter = MeterReading(kind=meter.kind, error=str(e))
            continue
        ledger.meter = MeterReading(kind=meter.kind, total_bytes=truth.total_bytes, used_bytes=truth.used_bytes,
                                    free_bytes=truth.free_bytes)
    return AdminGpu(devices=devices, unverified_releases=g.coordinator.unverified_releases)


class Forgotten(BaseModel):
    device: str
    model: str | None = Field(None, description="The model whose unverified bytes were let go; null: every model's.")
    forgotten_bytes: int = Field(description="Bytes the ledger no longer charges.")


@router.post("/admin/gpu/{device}/forget-unverified", response_model=Forgotten, tags=["admin"],
             summary="Let the ledger go of memory whose release was never verified (the operator's word that it is free)",
             responses=error_responses(401, 404))
async def forget_unverified(device: str, request: Request,
                            model: str | None = Query(None, description="Only this model's unverified bytes.")) -> Forgotten:
    """A release the meter never confirmed stays charged (``unverified`` in GET /admin/gpu) until the meter
    shows it back or the service's worker is gone. When the operator knows better (the memory was freed by
    hand, the meter is misled by another tenant), this lets it go now."""
    g = gw(request)
    if device not in g.coordinator.cores:
        raise NotFound(f"no ledger for device {device!r}; devices: {sorted(g.coordinator.cores)}", param="device",
                       code="device_not_found")
    return Forgotten(device=device, model=model, forgotten_bytes=g.coordinator.forget_unverified(device, model))
