from __future__ import annotations

from pydantic import BaseModel, Field

from modelhost.contract import DeviceMemory, ModelRow, SpareWorker

from .coordinator.views import DeviceLedger, LedgerState


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
    state: str = Field(description="unloaded, loading, ready, unloading, failed, parking, parked (its weights in "
                                   "host memory in its live worker: its next request un-parks it), unavailable "
                                   "(something it needs is missing on this machine: reason says what), or unknown "
                                   "when the service is unreachable")
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
    charged_bytes: int | None = Field(None, description="What the coordinator's ledger charges it now.")
    ttl_s: float | None = None
    pin: bool = False
    priority: int = 0
    group: str | None = None
    preload: bool = Field(False, description="Loaded when the gateway starts (the catalog's preload).")
    cached: bool | None = Field(None, description="Its weights are on its service's disk; false: its first load "
                                "pulls them first (POST /admin/models/{id}/pull ahead of time); null: unknown (the "
                                "backend fetches its own weights on its first load, or the service did not answer).")
    size_on_disk_bytes: int | None = Field(None, description="What its weights take on disk; null when unknown.")
    parkable: bool | None = Field(None, description="Its service can park it (README: the parked tier); null: unknown.")
    host_memory_bytes: int | None = Field(None, description="Host memory its parked weights take, while parked.")
    unpark_s: float | None = Field(None, description="Its last measured un-park (host memory back to the device).")


class AdminService(BaseModel):
    """A family service as the gateway sees it."""

    url: str
    reachable: bool
    error: str | None = Field(None, description="Why it could not be read.")
    worker_pid: int | None = Field(None, description="Its worker process, while any model is loaded.")
    worker_memory_bytes: int | None = None
    meter: str | None = Field(None, description="How it measures memory: nvml or host.")
    device: DeviceMemory | None = None
    spare: SpareWorker | None = Field(None, description="Its warm spare worker (frameworks imported, no device "
                                      "memory): the next load that needs a worker takes it; null when none.")


class AdminModels(BaseModel):
    object: str = "list"
    data: list[AdminModel]
    services: dict[str, AdminService] = Field(description="Per family service: reachable, worker pid, worker memory, error.")


class AdminLoaded(ModelRow):
    """``POST /admin/models/{id}/load``: the model as its service reports it once ready, and its ledger entry."""

    ledger: LedgerState


class AdminUnloaded(BaseModel):
    """``POST /admin/models/{id}/unload``: answered once the release is over."""

    model: str
    state: str = Field("unloaded", description="Always unloaded: the answer comes once the model has left.")
    was_resident: bool = Field(description="False when nothing was resident, so there was nothing to release.")
    freed_bytes: int = Field(description="What the release gave back, as the model's service measured it.")
    verified: bool = Field(description="The service said unloaded and, on a GPU, the device's meter showed the "
                                       "memory back within the release timeout.")
    seconds: float = Field(description="From the unload action (after the drain) until the release was verified.")
    worker_stopped: bool = Field(description="The service's last resident model left, so its worker process ended.")
    detail: str = Field(description="How the release was verified, or why it was not.")


class AdminGpu(BaseModel):
    """``GET /admin/gpu``: the coordinator's ledger per device, beside the device's own meter."""

    devices: dict[str, DeviceLedger]
    unverified_releases: int = Field(description="Releases the meter did not confirm in time since the gateway started.")
