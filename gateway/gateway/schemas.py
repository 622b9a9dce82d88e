from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "roundhouse"
    family: str
    backend: str


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class AdminModel(BaseModel):
    id: str
    family: str
    service: str
    state: str = Field(description="unloaded, loading, ready, unloading, failed, or unknown when the service is unreachable")
    reason: str | None = None
    device: str | None = None
    device_requested: str
    memory_bytes: int | None = None
    peak_memory_bytes: int | None = None
    memory_estimate_bytes: int
    load_s: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    queue_depth: int = Field(0, description="Requests waiting at the coordinator plus items waiting in the service's batcher.")
    ledger_state: str = Field("unloaded", description="The coordinator's view: unloaded, loading, ready, draining, unloading.")
    device_ledger: str = Field("cpu", description="The device whose memory budget the model is charged to.")
    ttl_s: float | None = None
    pin: bool = False
    priority: int = 0
    group: str | None = None


class AdminModels(BaseModel):
    object: str = "list"
    data: list[AdminModel]
    services: dict[str, Any] = Field(description="Per family service: reachable, worker pid, worker memory, error.")
