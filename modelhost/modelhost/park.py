"""The parked tier: an evicted model whose weights wait in host memory inside the live worker, so its next load is
a copy back to the device (``unpark``) instead of a load from disk into a worker that may have to start.

    ready ──park──▶ parking ──▶ parked ──load──▶ loading (un-park + warm-up) ──▶ ready
                                   └──unload──▶ unloading ──▶ unloaded

What parking costs and gives, per backend (``Backend.can_park``): torch modules (caption's BLIP, BLIP-2,
Qwen2.5-VL) move to pinned host memory and give their device memory back to the driver; CTranslate2
(faster-whisper) does the same through ``unload_model(to_cpu=True)``. The worker keeps its CUDA context (a few
hundred MB on a GPU), which a full unload of the last model would have freed with the process. ONNX Runtime
sessions, dlib, pocketsphinx and engines run as subprocesses cannot park: a park of them unloads instead.

Invariants (the runtime's owner rules hold: every change through ``ModelRuntime._transition``):

* A model is parked only when the service's ``park`` setting is on, its backend said at load that it can park,
  and the parked weights stay under ``park_host_bytes``; otherwise ``park`` unloads it and says why. So a caller
  (the gateway's coordinator) can always ask for a park: the worst it gets is the unload it would have asked for.
* A model is parked only with no request in flight: it is drained first (no new leases: a PARKING model is not
  READY), and its batcher ends only once the park is done.
* The park runs as the model's eviction task (``entry.unload_task``): a load or unload arriving meanwhile waits
  for it, then finds the model PARKED.
* A parked model keeps its worker alive (the runtime counts it as holding the worker); a worker that dies takes
  its parked models with it (FAILED, as its resident ones).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .contract import ModelRow, ParkReply
from .errors import Conflict
from .model_entry import ModelEntry
from .states import ModelState
from .worker import WorkerDied, WorkerError

if TYPE_CHECKING:
    from .runtime import ModelRuntime

log = logging.getLogger(__name__)

S = ModelState


@dataclass
class ParkRecord:
    can_park: bool | None = None  # what its backend said at its last load; None before any
    host_bytes: int | None = None  # while parked: what its weights take in host memory
    resident_bytes: int | None = None  # its measured memory on the device, given back when un-parked
    unpark_s: float | None = None  # its last un-park: the copy and the warm-up
    unparked: bool = False  # its last load was an un-park


class Parking:
    """The parked tier of one runtime: its records and the two moves, park and un-park."""

    def __init__(self, runtime: "ModelRuntime") -> None:
        self.rt = runtime
        self.records: dict[str, ParkRecord] = {name: ParkRecord() for name in runtime.entries}

    def parked_bytes(self) -> int:
        return sum(r.host_bytes or 0 for n, r in self.records.items() if self.rt.entries[n].state is S.PARKED)

    def why_not(self, entry: ModelEntry) -> str | None:
        """Why ``entry`` would be unloaded rather than parked, or None."""
        rec = self.records[entry.spec.id]
        if not self.rt.settings.park:
            return "parking is off (the service's park setting)"
        if not rec.can_park:
            return f"its backend ({entry.spec.backend}) cannot park"
        cap = self.rt.settings.park_host_bytes
        need = entry.memory_bytes or entry.peak_memory_bytes or entry.spec.memory_estimate_bytes
        if cap is not None and self.parked_bytes() + need > cap:
            return f"{self.parked_bytes() / 2**20:.0f} MiB parked + {need / 2**20:.0f} MiB would pass park_host_bytes"
        return None

    def row(self, entry: ModelEntry, row: ModelRow) -> ModelRow:
        rec = self.records[entry.spec.id]
        parkable = None if rec.can_park is None else bool(rec.can_park and self.rt.settings.park)
        return row.model_copy(update={
            "parkable": parkable, "unpark_s": rec.unpark_s, "unparked": rec.unparked and entry.state is S.READY,
            "host_memory_bytes": rec.host_bytes if entry.state is S.PARKED else None})

    def loaded(self, entry: ModelEntry, can_park: bool) -> None:
        rec = self.records[entry.spec.id]
        rec.can_park, rec.unparked = can_park, False

    def gone(self, entry: ModelEntry) -> None:
        """``entry`` left the worker (unloaded, or the worker died): nothing of it is parked any more."""
        self.records[entry.spec.id].host_bytes = None
        self._export()

    def _export(self) -> None:
        family = self.rt.family
        parked = [n for n, e in self.rt.entries.items() if e.state is S.PARKED]
        self.rt.metrics.parked_models.labels(family).set(len(parked))
        self.rt.metrics.parked_bytes.labels(family).set(self.parked_bytes())

    # park ----------------------------------------------------------------------------------------

    async def park(self, name: str) -> ParkReply:
        """Park ``name`` (drained first), or unload it where it cannot be parked; answer when it is done."""
        rt, entry = self.rt, self.rt.entry(name)
        while True:
            if entry.state is S.LOADING and entry.load_task is not None:
                await asyncio.shield(entry.load_task)
                continue
            if entry.state in (S.PARKING, S.UNLOADING) and entry.unload_task is not None:
                await asyncio.shield(entry.unload_task)
                continue
            break
        if entry.state is S.PARKED:
            return self._reply(entry, parked=True, freed=0, park_s=0.0)
        why = self.why_not(entry) if entry.state is S.READY else f"it is {entry.state.value}"
        if why is not None:
            unloaded = await rt.unload(name, drain=True, reason="swap")
            return ParkReply(model=name, state=unloaded.state, parked=False, reason=why, freed_bytes=unloaded.freed_bytes,
                             park_s=unloaded.unload_s, worker_stopped=unloaded.worker_stopped)
        if entry.leases:
            entry.draining = True
            try:
                async with asyncio.timeout(rt.settings.drain_timeout_s):
                    await entry.idle.wait()
            except asyncio.TimeoutError:
                raise Conflict(f"model {name} still had requests in flight after {rt.settings.drain_timeout_s:.0f} s "
                               "of draining", code="drain_timeout")
            finally:
                entry.draining = False
            if entry.state is not S.READY:
                return await self.park(name)
        rt._transition(entry, S.PARKING, "evicted: weights to host memory")
        entry.unload_task = asyncio.create_task(self._park(entry), name=f"park-{name}")
        return await asyncio.shield(entry.unload_task)

    async def _park(self, entry: ModelEntry) -> ParkReply:
        rt, name = self.rt, entry.spec.id
        worker = rt.workers.worker
        try:
            if worker is None:
                raise WorkerDied("no worker")
            reply = await worker.call("park", {"model": name}, timeout_s=rt.settings.load_timeout_s)
        except (WorkerError, asyncio.TimeoutError) as e:
            log.warning("model %s: park failed (%s); unloading it instead", name, e)
            rt._transition(entry, S.READY, None)
            entry.unload_task = None
            unloaded = await rt.unload(name, drain=True, reason="swap")
            return ParkReply(model=name, state=unloaded.state, parked=False, reason=f"the park failed: {e}",
                             freed_bytes=unloaded.freed_bytes, park_s=unloaded.unload_s, worker_stopped=unloaded.worker_stopped)
        except WorkerDied:  # the crash handler has made it FAILED
            return ParkReply(model=name, state=entry.state.value, parked=False, reason="the worker died",
                             freed_bytes=0, park_s=0.0)
        if entry.batcher is not None:
            await entry.batcher.close()
            entry.batcher = None
        rec = self.records[name]
        freed = int(reply["freed_bytes"])
        rec.host_bytes, rec.resident_bytes = int(reply["host_bytes"]), entry.memory_bytes
        entry.memory_bytes = max(0, (entry.memory_bytes or 0) - freed) if freed else 0  # what it still holds there
        rt.metrics.memory.labels(rt.family, name).set(entry.memory_bytes)
        if entry.state is S.PARKING:
            rt._transition(entry, S.PARKED, f"{rec.host_bytes / 2**20:.0f} MiB in host memory, {freed / 2**20:.0f} MiB "
                                            f"of device memory freed in {reply['park_s']:.2f} s")
        self._export()
        return self._reply(entry, parked=entry.state is S.PARKED, freed=freed, park_s=float(reply["park_s"]))

    def _reply(self, entry: ModelEntry, *, parked: bool, freed: int, park_s: float) -> ParkReply:
        return ParkReply(model=entry.spec.id, state=entry.state.value, parked=parked, freed_bytes=freed,
                         host_memory_bytes=self.records[entry.spec.id].host_bytes or 0, park_s=park_s)

    # un-park -------------------------------------------------------------------------------------

    async def unpark(self, entry: ModelEntry) -> None:
        """The load of a PARKED model (``ensure_ready`` made it LOADING): the copy back and the warm-up."""
        rt, name, rec = self.rt, entry.spec.id, self.records[entry.spec.id]
        t0 = time.perf_counter()
        try:
            worker = rt.workers.worker
            if worker is None:
                raise WorkerDied("no worker")
            reply = await worker.call("unpark", {"model": name}, timeout_s=rt.settings.load_timeout_s)
        except WorkerError as e:
            rt._fail_load(entry, f"un-park failed: {e.message}", out_of_memory=e.kind == "out_of_memory")
            worker = rt.workers.worker
            try:  # its weights must not stay in the worker behind a FAILED row
                if worker is not None:
                    await worker.call("unload", {"model": name})
            except (WorkerError, WorkerDied):
                pass
            rec.host_bytes = None
            self._export()
            await rt._stop_worker_if_empty()
            return
        except WorkerDied as e:
            if entry.state is S.LOADING:
                rt._fail_load(entry, str(e))
            rec.host_bytes = None
            self._export()
            return
        unpark_s = time.perf_counter() - t0
        rec.unpark_s, rec.unparked, rec.host_bytes = unpark_s, True, None
        entry.memory_bytes = rec.resident_bytes
        rt.metrics.memory.labels(rt.family, name).set(entry.memory_bytes or 0)
        rt.metrics.unpark_seconds.labels(rt.family, name).observe(unpark_s)
        rt._serve(entry)
        rt._transition(entry, S.READY, f"un-parked in {unpark_s:.2f} s (copy {reply['unpark_s']:.2f} s + "
                                       f"warm-up {reply['warmup_s']:.2f} s)")
        self._export()
