"""The model host API's contract: what every family service answers on its host routes, typed once.

The services use these as their response models; ``ModelHostClient`` returns them parsed, so the gateway
reads attributes, never dict keys, and a renamed field fails loudly at the first reply instead of
silently turning a ledger figure into ``None``.

One name for a model's measured memory, from the worker to the ledger to the metric:
``peak_memory_bytes`` — the peak the worker measured during the model's load and warm-up. It is what
the coordinator charges, what ``footprints.json`` remembers and what ``roundhouse_model_peak_memory_bytes``
exports. ``memory_bytes`` is what stayed resident after the warm-up (informational).

Pydantic and the standard library only: the gateway's environment imports this without any family's stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class LoadMeasurement:
    """What the worker measured while loading a model (sent over the worker pipe)."""

    device: str
    memory_bytes: int
    peak_memory_bytes: int
    load_s: float
    warmup_s: float
    can_park: bool = False


class ModelRow(BaseModel):
    """One catalog model of a family service and its state there (``GET /v1/models``, and the answer
    of ``POST /v1/models/{name}/load``)."""

    id: str
    family: str
    backend: str
    source: str | None = None
    state: str = Field(description="unloaded, loading, ready, unloading, parking, parked, failed, or unavailable "
                                   "(something it needs is missing on this machine: the reason says what).")
    reason: str | None = Field(None, description="Why it is in this state (a failed load's cause, ...).")
    device_requested: str
    device: str | None = Field(None, description="Where it runs once loaded.")
    memory_bytes: int | None = Field(None, description="Device memory it holds after its warm-up.")
    peak_memory_bytes: int | None = Field(
        None, description="Peak device memory measured during its load and warm-up: what the coordinator charges.")
    memory_estimate_bytes: int
    load_s: float | None = None
    warmup_s: float | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    queue_depth: int = Field(0, description="Items waiting in the service's batcher.")
    ttl_s: float | None = None
    pin: bool = False
    priority: int = 0
    group: str | None = None
    max_batch: int = 1
    cached: bool | None = Field(
        None, description="Its weights are on this machine (a local source, weights shipped in a package, or a "
        "complete download in the cache); false: its first load would download them (pull them first); null: the "
        "backend fetches its weights itself on its first load, so the service cannot tell.")
    size_on_disk_bytes: int | None = Field(None, description="What its weights take on disk; null when unknown.")
    parkable: bool | None = Field(
        None, description="Its service would park it instead of unloading it (the service's park setting is on and its "
        "backend can move its weights to host memory); null until its first load tells.")
    host_memory_bytes: int | None = Field(
        None, description="While parked: the host memory its weights take in the live worker.")
    unpark_s: float | None = Field(None, description="Its last measured un-park (host memory back to the device).")
    unparked: bool = Field(False, description="In a load's answer: the load was an un-park, not a load from disk.")

    @property
    def parked(self) -> bool:
        return self.state == "parked"

    @property
    def resident(self) -> bool:
        """Holds (or is about to hold, or is still releasing) device memory."""
        return self.state in ("ready", "loading", "unloading", "parking")

    @property
    def ready_s(self) -> float:
        """Seconds from a load request to ready: the load and the warm-up."""
        return (self.load_s or 0.0) + (self.warmup_s or 0.0)


class PullStatus(BaseModel):
    """``POST|GET /v1/models/{name}/pull``: a model's weights on their way into the cache."""

    model: str
    source: str
    kind: str = Field(description="local (a path: verified in place), hub (a Hugging Face repo, downloaded into the "
                                  "cache), url (files or a pack zip from a URL, checked by sha256 where known: "
                                  "insightface packs, openai-whisper names, Piper voices), bundled (weights shipped in "
                                  "a package: nothing to fetch), or on_load (the backend fetches its weights itself on "
                                  "its first load, Coqui: not pullable).")
    state: str = Field(description="idle (no pull since the service started), pulling, done or failed.")
    cached: bool | None = Field(None, description="As the model row's cached.")
    size_on_disk_bytes: int | None = None
    bytes_done: int = Field(0, description="Bytes fetched (or verified) by this pull so far.")
    bytes_total: int | None = Field(None, description="Bytes this pull fetches in all; null until known.")
    rate_bytes_per_s: float | None = None
    eta_s: float | None = Field(None, description="Seconds left at the current rate; null when unknown.")
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = Field(None, description="Why the pull failed, in words.")

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")


class CacheDeleted(BaseModel):
    """``DELETE /v1/models/{name}/cache``."""

    model: str
    freed_bytes: int
    path: str | None = Field(None, description="What was removed.")


class DeviceMemory(BaseModel):
    device: str
    total_bytes: int
    used_bytes: int


class SpareWorker(BaseModel):
    """A family service's warm spare worker: a process with the family's frameworks imported and no device
    context, which the next load that needs a new worker takes instead of starting one."""

    state: str = Field(description="starting (the process starts and imports the frameworks) or ready.")
    pid: int | None = None
    host_memory_bytes: int = Field(0, description="Its resident set: the host memory keeping it costs.")
    device_memory_bytes: int = Field(
        0, description="What the service's meter finds for it: 0 on a GPU, as it has no device context; its "
        "resident set where the meter measures host memory.")
    preload_s: float | None = Field(None, description="How long its imports took.")
    preloaded: list[str] = Field(default_factory=list, description="The modules it imported (Backend.preload).")


class ModelsReply(BaseModel):
    """``GET /v1/models`` of a family service: its models and its worker."""

    object: str = "list"
    family: str
    service: str
    worker_pid: int | None = None
    worker_memory_bytes: int = 0
    spare: SpareWorker | None = Field(
        None, description="The warm spare worker; null when none is kept (turned off, or being replaced).")
    meter: str = Field(description="How memory is measured: nvml or host.")
    device: DeviceMemory | None = Field(None, description="The device as the meter reads it; null when it cannot.")
    meter_error: str | None = Field(None, description="Why the meter cannot read the device (the GPU is lost, ...).")
    data: list[ModelRow]


class UnloadReply(BaseModel):
    """``POST /v1/models/{name}/unload``: answered once the memory is released."""

    model: str
    state: str
    freed_bytes: int = Field(description="Device memory the release gave back, as the service measured it.")
    unload_s: float
    worker_stopped: bool = Field(description="The last resident model left, so the worker process ended.")


class ParkReply(BaseModel):
    """``POST /v1/models/{name}/park``: answered once the weights are in host memory and the device memory is
    released, or, where the model cannot be parked (its backend cannot, the setting is off, the host-memory cap is
    reached), once it was unloaded instead."""

    model: str
    state: str = Field(description="parked, or unloaded where it was unloaded instead.")
    parked: bool
    reason: str | None = Field(None, description="Why it was unloaded instead of parked.")
    freed_bytes: int = Field(description="Device memory given back, as the service measured it.")
    host_memory_bytes: int = Field(0, description="Host memory its parked weights take.")
    park_s: float
    worker_stopped: bool = False


class ReadyReply(BaseModel):
    status: str
    family: str
    models: int
    worker_pid: int | None = None
