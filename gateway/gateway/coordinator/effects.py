"""The coordinator's reach into the world, behind one narrow interface: load, unload (with
verified release), read a service's models, and read a device's meter. The real one talks HTTP to the family services
and to the servers of external tenants (``gateway.tenants``: the llm family, whose models may live on several
servers, so the client is chosen by the model, never by its family alone) and reads NVML; tests and the
simulator use their own."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient, reply_as
from modelhost.contract import ModelRow, ParkReply
from modelhost.errors import UpstreamError
from modelhost.meter import MemoryMeter, MeterError

from ..tenants import TenantClient, Tenants
from .actions import Released

__all__ = ["Effects", "HttpEffects", "Loaded", "Released"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    peak_memory_bytes: int
    load_s: float
    device: str
    unparked: bool = False  # it was an un-park (``load_s`` then times the un-park)
    parkable: bool | None = None  # its service would park it when evicted (None: it does not say)


class Effects(Protocol):
    async def load(self, spec: ModelSpec) -> Loaded: ...

    async def unload(self, spec: ModelSpec, charged_bytes: int, *, park: bool = False) -> Released:
        """Unload (``park``: park, or unload where the service cannot) and verify the release."""
        ...

    async def models(self, family: str) -> list[ModelRow]: ...

    def device_used(self, device: str) -> int | None:
        """The device's used bytes by its meter now; None where the device is not metered (the host).
        Raises ``MeterError`` when the meter cannot read it."""
        ...

    def device_total(self, device: str) -> int | None:
        """The device's total bytes by its meter; None where it is not metered. Raises ``MeterError``."""
        ...


class HttpEffects:
    def __init__(self, clients: dict[str, ModelHostClient], meters: dict[str, MemoryMeter | None], *,
                 load_timeout_s: float, release_timeout_s: float, release_tolerance: float = 0.8,
                 tenants: Tenants | None = None) -> None:
        self.clients = clients
        self.meters = meters  # device -> NVML meter; None where the device is the host
        self.load_timeout_s = load_timeout_s
        self.release_timeout_s = release_timeout_s
        self.release_tolerance = release_tolerance
        self.tenants = tenants or Tenants([])

    def client(self, spec: ModelSpec) -> ModelHostClient:
        """The server of ``spec``: its tenant server's client, else its family service's."""
        return self.tenants.client(spec) or self.clients[spec.family]

    def _meter(self, spec: ModelSpec) -> MemoryMeter | None:
        return self.meters.get(spec.device if ":" in spec.device else ("cuda:0" if spec.wants_gpu else "cpu"))

    async def load(self, spec: ModelSpec) -> Loaded:
        """Load and measure. A family service measures its worker's peak; a tenant's server gives its own
        figure (Ollama's ``size_vram``); one that gives none (llama-swap) is measured by what the meter saw
        the load take, else charged at the catalog's estimate."""
        client = self.client(spec)
        tenant = isinstance(client, TenantClient)
        before = self._used(spec) if tenant else None
        row = await client.load(spec.id, timeout_s=self.load_timeout_s)
        peak = row.peak_memory_bytes
        if peak is None and tenant:
            after = self._used(spec)
            peak = after - before if before is not None and after is not None and after > before \
                else spec.memory_estimate_bytes
            log.info("%s: %s gives no memory figure; charged %.0f MiB (%s)", spec.id, client.name, peak / 2**20,
                     "the meter's difference" if peak != spec.memory_estimate_bytes else "the catalog's estimate")
        if peak is None:
            raise UpstreamError(f"{spec.id} was loaded but its service measured no peak_memory_bytes",
                                code="bad_upstream_response")
        load_s = row.unpark_s if row.unparked and row.unpark_s is not None else row.ready_s
        return Loaded(peak_memory_bytes=peak, load_s=load_s, device=str(row.device or spec.device), unparked=row.unparked,
                      parkable=row.parkable)

    def _used(self, spec: ModelSpec) -> int | None:
        meter = self._meter(spec)
        if meter is None:
            return None
        try:
            return meter.device().used_bytes
        except MeterError:
            return None

    async def unload(self, spec: ModelSpec, charged_bytes: int, *, park: bool = False) -> Released:
        """Unload and verify: the service says the memory is freed AND the meter agrees, within a
        bounded time. Never a fixed sleep: the meter is polled until it agrees or time is up.

        The service is always asked, whatever the meter does: a meter that cannot be read (a lost
        GPU) makes the release unverified, never skips the unload (it used to be read first, so a
        lost GPU left every model loaded). On a GPU the meter is the judge, against what the ledger
        charged (``expected_back``): the service's own figure only lowers that where its worker
        lives on and keeps the rest for its other models. A service that reports 0 bytes freed (its
        meter could not see the worker) is verified by NVML alone, and not at all when NVML shows
        nothing back (it used to be verified by 0 >= 0)."""
        t0 = time.monotonic()
        meter = self._meter(spec)
        used_before: int | None = None
        meter_error: MeterError | None = None
        if meter is not None:
            try:
                used_before = meter.device().used_bytes
            except MeterError as e:
                meter_error = e  # the service is asked all the same
        client = self.client(spec)
        # A family service drains the model first (its requests may run long); a tenant's server is
        # asked once nothing of ours is in flight, and given the release's time to let go.
        timeout_s = self.release_timeout_s if isinstance(client, TenantClient) else self.release_timeout_s + self.load_timeout_s
        host_bytes: int | None = None
        if park and not isinstance(client, TenantClient):  # parked, or unloaded where the service cannot park
            body = await client.request("POST", f"/v1/models/{spec.id}/park", timeout_s=timeout_s)
            parked = reply_as(ParkReply, body, client.name)
            state, freed, stopped, host_bytes = parked.state, parked.freed_bytes, parked.worker_stopped, parked.host_memory_bytes
        else:
            reply = await client.unload(spec.id, drain=True, timeout_s=timeout_s)
            state, freed, stopped = reply.state, reply.freed_bytes, reply.worker_stopped

        def done(verified: bool, detail: str, back: int | None = None, used: int | None = None) -> Released:
            # Parked, it still holds what neither the service nor the meter saw come back (none on the host).
            held = 0 if meter is None or state != "parked" else max(0, charged_bytes - max(freed, back or 0))
            return Released(freed, verified, time.monotonic() - t0, detail, stopped, unloaded=state in ("unloaded", "parked"),
                            returned_bytes=back, device_used_bytes=used, parked=state == "parked", held_bytes=held,
                            host_bytes=host_bytes)

        if state not in ("unloaded", "parked"):
            return done(False, f"service answered state {state}")
        if meter is None:
            # Host memory: the service measured its own worker's release (process RSS, or the
            # worker's end); the host's total is too noisy to second-guess it.
            return done(True, "service-measured release" if state == "unloaded" else "service-measured park")
        if used_before is None:
            return done(False, f"the meter could not read the device, so nothing verified the release: {meter_error}")
        expected = self.release_tolerance * expected_back(charged_bytes, freed, stopped)
        deadline = t0 + self.release_timeout_s
        delay = 0.01
        back: int | None = None
        while True:
            try:
                used = meter.device().used_bytes
            except MeterError as e:
                return done(False, f"the meter failed during the check: {e}", back)
            back = used_before - used
            if back >= expected:
                return done(True, f"NVML: {back / 2**20:.0f} MiB back", back, used)
            if time.monotonic() >= deadline:
                return done(False, f"NVML shows {back / 2**20:.0f} MiB back of {charged_bytes / 2**20:.0f} MiB after "
                                   f"{self.release_timeout_s:.0f} s", back, used)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def device_used(self, device: str) -> int | None:
        meter = self.meters.get(device)
        return None if meter is None else meter.device().used_bytes

    def device_total(self, device: str) -> int | None:
        meter = self.meters.get(device)
        return None if meter is None else meter.device().total_bytes

    async def models(self, family: str) -> list[ModelRow]:
        """What ``family`` holds: its service's rows, or for the llm family every tenant server's."""
        if self.tenants.serves(family):
            return await self.tenants.models(family)
        return (await self.clients[family].models()).data


def expected_back(charged_bytes: int, freed_bytes: int, worker_stopped: bool) -> int:
    """What the meter must show back for a release to be verified (before the tolerance): the whole
    charge, unless the worker lives on and the service measured less than the charge coming back
    (the rest stays with the worker, and ``Core.unload_done`` moves it to a model still in it)."""
    if worker_stopped or not 0 < freed_bytes < charged_bytes:
        return charged_bytes
    return freed_bytes
