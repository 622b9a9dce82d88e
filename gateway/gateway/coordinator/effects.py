"""The coordinator's reach into the world, behind one narrow interface: load, unload (with
verified release), and read a service's models. The real one talks HTTP to the family services
and reads NVML; tests and the simulator use their own."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient
from modelhost.contract import ModelRow
from modelhost.errors import UpstreamError
from modelhost.meter import MemoryMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    peak_memory_bytes: int
    load_s: float
    device: str


@dataclass(frozen=True)
class Released:
    freed_bytes: int  # what the release gave back, as the service measured it
    verified: bool  # the service said unloaded and (on a GPU) the meter agreed in time
    seconds: float  # from asking for the unload until verified (or given up on)
    detail: str  # how it was verified, or why not
    worker_stopped: bool = False  # the service's last resident model left, so its worker process ended


class Effects(Protocol):
    async def load(self, spec: ModelSpec) -> Loaded: ...

    async def unload(self, spec: ModelSpec, charged_bytes: int) -> Released: ...

    async def models(self, family: str) -> list[ModelRow]: ...


class HttpEffects:
    def __init__(self, clients: dict[str, ModelHostClient], meters: dict[str, MemoryMeter | None], *,
                 load_timeout_s: float, release_timeout_s: float, release_tolerance: float = 0.8) -> None:
        self.clients = clients
        self.meters = meters  # device -> NVML meter; None where the device is the host
        self.load_timeout_s = load_timeout_s
        self.release_timeout_s = release_timeout_s
        self.release_tolerance = release_tolerance

    async def load(self, spec: ModelSpec) -> Loaded:
        row = await self.clients[spec.family].load(spec.id, timeout_s=self.load_timeout_s)
        if row.peak_memory_bytes is None:
            raise UpstreamError(f"{spec.id} was loaded but its service measured no peak_memory_bytes",
                                code="bad_upstream_response")
        return Loaded(peak_memory_bytes=row.peak_memory_bytes, load_s=row.ready_s, device=str(row.device))

    async def unload(self, spec: ModelSpec, charged_bytes: int) -> Released:
        """Unload and verify: the service says the memory is freed AND the meter agrees, within a
        bounded time. Never a fixed sleep: the meter is polled until it agrees or time is up."""
        t0 = time.monotonic()
        meter = self.meters.get(spec.device if ":" in spec.device else ("cuda:0" if spec.wants_gpu else "cpu"))
        used_before = meter.device().used_bytes if meter is not None else None
        reply = await self.clients[spec.family].unload(spec.id, drain=True, timeout_s=self.release_timeout_s + self.load_timeout_s)
        freed, stopped = reply.freed_bytes, reply.worker_stopped
        if reply.state != "unloaded":
            return Released(freed, False, time.monotonic() - t0, f"service answered state {reply.state}", stopped)
        if meter is None:
            # Host memory: the service measured its own worker's release (process RSS, or the
            # worker's end); the host's total is too noisy to second-guess it.
            return Released(freed, True, time.monotonic() - t0, "service-measured release", stopped)
        expected = self.release_tolerance * min(charged_bytes, freed)
        deadline = t0 + self.release_timeout_s
        delay = 0.01
        while True:
            released = used_before - meter.device().used_bytes
            if released >= expected:
                return Released(freed, True, time.monotonic() - t0, f"NVML: {released / 2**20:.0f} MiB back", stopped)
            if time.monotonic() >= deadline:
                return Released(freed, False, time.monotonic() - t0,
                                f"NVML shows {released / 2**20:.0f} MiB back of {charged_bytes / 2**20:.0f} MiB after "
                                f"{self.release_timeout_s:.0f} s", stopped)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def models(self, family: str) -> list[ModelRow]:
        return (await self.clients[family].models()).data
