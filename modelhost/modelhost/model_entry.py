"""One model's record in the runtime, and the row the host API shows for it.

``ModelRuntime`` is the only writer of a ``ModelEntry``: its state changes only through the
runtime's ``_transition``, its lease count only in ``ModelRuntime.lease``. Everything else reads it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .batching import Batcher
from .catalog import ModelSpec
from .contract import ModelRow
from .states import ModelState


@dataclass
class ModelEntry:
    spec: ModelSpec
    backend_path: str
    state: ModelState = ModelState.UNLOADED
    reason: str | None = None
    load_out_of_memory: bool = False  # its last load failed for lack of device memory (a 503, not a 500)
    device: str | None = None
    memory_bytes: int | None = None
    peak_memory_bytes: int | None = None
    load_s: float | None = None
    warmup_s: float | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    last_used_mono: float = 0.0
    leases: int = 0
    draining: bool = False
    load_task: asyncio.Task | None = None
    unload_task: asyncio.Task | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no lease is held
    batcher: Batcher | None = None  # exists while READY

    def __post_init__(self) -> None:
        self.idle.set()


def model_row(entry: ModelEntry) -> ModelRow:
    """The host API's view of one model (``GET /v1/models``, the load reply)."""
    s = entry.spec
    return ModelRow(
        id=s.id, family=s.family, backend=s.backend, source=s.source, state=entry.state.value,
        reason=entry.reason, device_requested=s.device, device=entry.device, memory_bytes=entry.memory_bytes,
        peak_memory_bytes=entry.peak_memory_bytes, memory_estimate_bytes=s.memory_estimate_bytes,
        load_s=entry.load_s, warmup_s=entry.warmup_s, loaded_at=entry.loaded_at, last_used=entry.last_used,
        in_flight=entry.leases, queue_depth=entry.batcher.depth if entry.batcher else 0, ttl_s=s.ttl_s,
        pin=s.pin, priority=s.priority, group=s.group, max_batch=s.max_batch,
    )
