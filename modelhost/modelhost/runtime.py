"""The model runtime: the one owner of every model's state in a family service.

Invariants (each guarded here, each with a test):

* State changes only through ``_transition``, which checks ``states.TRANSITIONS`` and logs and
  exports each transition once.
* Callers never test a state and then act: ``ensure_ready`` decides inside the owner. Concurrent
  loads of one model coalesce on one task; a load asked for while the model unloads waits for the
  unload first (never two copies in memory).
* A model is READY only after its warm-up inference passed on the device the catalog asked for. A
  model asked for on a GPU that would run on CPU is FAILED with that reason, unless the catalog sets
  ``allow_cpu_fallback``.
* Inference holds a lease. ``unload`` refuses a leased model (409) or, with ``drain``, stops new
  leases and waits for the held ones to end. The idle reaper unloads only unleased models.
* Models live in one worker child process. The unload of the last resident model ends the worker,
  so an idle service holds no model memory, not even a CUDA context. If the worker dies, every model
  it held becomes FAILED with the exit code as reason; the next load starts a new worker, or takes
  the warm spare (``workers``, ``spare``: a worker with the frameworks imported and no device context).
* A parked model (``park``: weights in host memory in the live worker) keeps the worker alive as a resident one
  does (``HOLDING``); its next ``ensure_ready`` un-parks it instead of loading it; the worker's death fails it.

Everything runs on one event loop; the only other thread is the worker's reply reader, which hands
results to the loop with ``call_soon_threadsafe``.

Around the owner, each in its module: a model's record and its row (``model_entry``), the path from
a lease to the worker and back (``inference``), the idle reaper (``reaper``), the worker and its spare
(``workers``, ``spare``), the worker process itself (``worker``, ``worker_child``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator

from .catalog import Catalog
from .contract import LoadMeasurement, ModelRow, ParkReply, UnloadReply
from .errors import (  # noqa: F401 - InferenceFailed stays importable from here, as it was
    Conflict,
    InferenceFailed,
    ModelLeased,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    Unavailable,
)
from .inference import Lease, make_batcher  # Lease: the family services import it from here
from .meter import MemoryMeter
from .metrics import HostMetrics
from .model_entry import ModelEntry, model_row
from .oom import load_error
from .park import Parking
from .reaper import reap_idle
from .settings import HostSettings
from .states import ModelState, check_transition
from .worker import WorkerDied, WorkerError
from .workers import WorkerSlot

log = logging.getLogger(__name__)

S = ModelState
HOLDING = (S.READY, S.LOADING, S.UNLOADING, S.PARKING, S.PARKED)
"""The states in which a model keeps the worker alive."""


class ModelRuntime:
    def __init__(
        self,
        *,
        family: str,
        catalog: Catalog,
        backends: dict[str, str],
        settings: HostSettings,
        meter: MemoryMeter,
        metrics: HostMetrics,
        gpu_index: int | None,
    ) -> None:
        self.family = family
        self.settings = settings
        self.meter = meter
        self.metrics = metrics
        self.entries: dict[str, ModelEntry] = {}
        for spec in catalog.models:
            if spec.family != family:
                continue
            if spec.backend not in backends:
                raise ValueError(
                    f"catalog model {spec.id}: backend {spec.backend!r} is not one of {sorted(backends)} for family {family}"
                )
            self.entries[spec.id] = ModelEntry(spec=spec, backend_path=backends[spec.backend])
            metrics.set_state(spec.id, S.UNLOADED)
            # Counters exist at 0 from the start, so an alert's increase() sees their first event.
            metrics.load_failures.labels(family, spec.id)
            metrics.oom_events.labels(family, spec.id)
            metrics.requests.labels(family, spec.id, "ok")
        self.workers = WorkerSlot(family=family, settings=settings, meter=meter, metrics=metrics, gpu_index=gpu_index,
                                  backend_paths=[e.backend_path for e in self.entries.values()],
                                  on_crash=self._on_worker_crash)
        self.parking = Parking(self)
        self._reaper: asyncio.Task | None = None
        self._background: set[asyncio.Future] = set()

    # lifecycle of the runtime --------------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(reap_idle(self), name=f"{self.family}-reaper")
        self.workers.start()

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for entry in self.entries.values():
            for task in (entry.load_task, entry.unload_task):
                if task is not None and not task.done():
                    task.cancel()
            if entry.batcher is not None:
                await entry.batcher.close()
                entry.batcher = None
        await self.workers.close()

    # the one place state changes ---------------------------------------------------------------

    def _transition(self, entry: ModelEntry, new: ModelState, reason: str | None = None) -> None:
        old = entry.state
        check_transition(old, new)
        entry.state = new
        entry.reason = reason if new is S.FAILED else None
        name = entry.spec.id
        self.metrics.set_state(name, new)
        self.metrics.transitions.labels(self.family, name, old.value, new.value).inc()
        if new is S.FAILED:
            log.warning("model %s: %s -> %s (%s)", name, old.value, new.value, reason)
        else:
            log.info("model %s: %s -> %s%s", name, old.value, new.value, f" ({reason})" if reason else "")

    def entry(self, name: str) -> ModelEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise ModelNotFound(f"model {name!r} is not in the {self.family} catalog", param="model")
        return entry

    # load ----------------------------------------------------------------------------------------

    async def ensure_ready(self, name: str) -> ModelEntry:
        """Return once ``name`` is READY; load it if needed, joining a load already under way."""
        entry = self.entry(name)
        while True:
            if entry.state is S.READY and not entry.draining:
                return entry
            if entry.state is S.READY and entry.draining:
                raise ModelNotReady(f"model {name} is being unloaded", retry_after_s=1)
            if entry.state is S.LOADING and entry.load_task is not None:
                await asyncio.shield(entry.load_task)
                if entry.state is S.FAILED:
                    raise load_error(name, entry.reason, out_of_memory=entry.load_out_of_memory)
                continue
            if entry.state in (S.UNLOADING, S.PARKING) and entry.unload_task is not None:
                await asyncio.shield(entry.unload_task)
                continue
            if entry.state is S.PARKED:  # a load of a parked model is an un-park (``modelhost.park``)
                self._transition(entry, S.LOADING, "un-park")
                entry.load_task = asyncio.create_task(self.parking.unpark(entry), name=f"unpark-{name}")
                continue
            # UNLOADED or FAILED: start a load; concurrent callers find it in entry.load_task.
            self._transition(entry, S.LOADING)
            entry.load_task = asyncio.create_task(self._load(entry), name=f"load-{name}")
            # A spare the load took is replaced once the load is over, so its imports do not slow the load.
            entry.load_task.add_done_callback(lambda _: self.workers.replenish())
            await asyncio.shield(entry.load_task)
            if entry.state is S.FAILED:
                raise load_error(name, entry.reason, out_of_memory=entry.load_out_of_memory)

    async def _load(self, entry: ModelEntry) -> None:
        spec = entry.spec
        try:
            worker = await self.workers.ensure()
            info = await worker.call(
                "load",
                {"spec": spec.model_dump(), "backend_path": entry.backend_path, "cache_dir": str(self.settings.cache_dir)},
                timeout_s=self.settings.load_timeout_s,
            )
        except WorkerError as e:
            self._fail_load(entry, e.message, out_of_memory=e.kind == "out_of_memory")
            await self._stop_worker_if_empty()
            return
        except WorkerDied as e:
            if entry.state is S.LOADING:
                self._fail_load(entry, str(e))
            return
        except asyncio.TimeoutError:
            self._fail_load(entry, f"load did not finish within {self.settings.load_timeout_s:.0f} s")
            self.workers.kill("load timed out")
            return
        except Exception as e:  # never leave a model stuck in LOADING
            log.exception("model %s: load failed unexpectedly", spec.id)
            self._fail_load(entry, f"{type(e).__name__}: {e}")
            return
        measured: LoadMeasurement = info
        device = measured.device
        if spec.wants_gpu and not device.startswith("cuda") and not spec.allow_cpu_fallback:
            # Honest readiness: the catalog asked for a GPU and the model would run on CPU.
            with contextlib.suppress(WorkerError, WorkerDied):
                await worker.call("unload", {"model": spec.id})
            self._fail_load(
                entry,
                f"asked for {spec.device} but the model would run on {device}; "
                "set allow_cpu_fallback: true in the catalog to accept that",
            )
            await self._stop_worker_if_empty()
            return
        entry.device = device
        entry.memory_bytes = measured.memory_bytes
        entry.peak_memory_bytes = measured.peak_memory_bytes
        entry.load_s = measured.load_s
        entry.warmup_s = measured.warmup_s
        entry.loaded_at = time.time()
        self.parking.loaded(entry, measured.can_park)
        self._serve(entry)
        self.metrics.memory.labels(self.family, spec.id).set(entry.memory_bytes)
        self.metrics.peak_memory.labels(self.family, spec.id).set(entry.peak_memory_bytes)
        self.metrics.load_seconds.labels(self.family, spec.id).observe(entry.load_s + entry.warmup_s)
        self._transition(
            entry, S.READY,
            f"on {device}, {entry.memory_bytes / 2**20:.0f} MiB resident, peak {entry.peak_memory_bytes / 2**20:.0f} MiB, "
            f"load {entry.load_s:.2f} s + warm-up {entry.warmup_s:.2f} s",
        )

    def _serve(self, entry: ModelEntry) -> None:
        """A model just became ready (a load, an un-park): it takes requests from now."""
        entry.last_used = time.time()
        entry.last_used_mono = time.monotonic()
        entry.batcher = make_batcher(entry, family=self.family, settings=self.settings, metrics=self.metrics,
                                     current_worker=lambda: self.workers.worker, kill_worker=self._kill_worker)
        entry.batcher.start()

    def _fail_load(self, entry: ModelEntry, reason: str, *, out_of_memory: bool = False) -> None:
        entry.load_out_of_memory = out_of_memory
        self.metrics.load_failures.labels(self.family, entry.spec.id).inc()
        self._transition(entry, S.FAILED, reason)

    # inference -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Lease]:
        """Hold ``name`` for one request. The model must be READY: loading is the gateway's call
        (it decides what fits), so an unloaded model answers 503 ``model_not_ready``."""
        entry = self.entry(name)
        if entry.state is not S.READY or entry.draining:
            raise ModelNotReady(
                f"model {name} is {entry.state.value if not entry.draining else 'draining'}; load it first",
                retry_after_s=1,
            )
        entry.leases += 1
        entry.idle.clear()
        self.metrics.in_flight.labels(self.family, name).set(entry.leases)
        try:
            yield Lease(entry)
        finally:
            entry.leases -= 1
            entry.last_used = time.time()
            entry.last_used_mono = time.monotonic()
            self.metrics.in_flight.labels(self.family, name).set(entry.leases)
            if entry.leases == 0:
                entry.idle.set()

    # unload --------------------------------------------------------------------------------------

    async def unload(self, name: str, *, drain: bool = False, reason: str = "request") -> UnloadReply:
        """Unload ``name`` and return once its memory is released, with what was freed."""
        entry = self.entry(name)
        while True:
            if entry.state is S.LOADING and entry.load_task is not None:
                await asyncio.shield(entry.load_task)
                continue
            if entry.state is S.UNLOADING and entry.unload_task is not None:
                return await asyncio.shield(entry.unload_task)
            if entry.state is S.PARKING and entry.unload_task is not None:
                await asyncio.shield(entry.unload_task)
                continue
            if entry.state is S.UNLOADED:
                return UnloadReply(model=name, state=entry.state.value, freed_bytes=0, unload_s=0.0, worker_stopped=False)
            if entry.state is S.FAILED:
                self._transition(entry, S.UNLOADED, "failure cleared")
                await self._stop_worker_if_empty()
                return UnloadReply(model=name, state=entry.state.value, freed_bytes=0, unload_s=0.0, worker_stopped=False)
            break  # READY or PARKED
        if entry.leases and not drain:
            raise ModelLeased(
                f"model {name} has {entry.leases} request(s) in flight; retry later or pass drain=true",
                param="drain",
            )
        if entry.leases:
            entry.draining = True
            try:
                async with asyncio.timeout(self.settings.drain_timeout_s):
                    await entry.idle.wait()
            except asyncio.TimeoutError:
                raise Conflict(f"model {name} still had requests in flight after {self.settings.drain_timeout_s:.0f} s of draining", code="drain_timeout")
            finally:
                entry.draining = False
            if entry.state is not S.READY:  # someone else unloaded it, or the worker died, meanwhile
                return await self.unload(name, drain=drain, reason=reason)
        self._transition(entry, S.UNLOADING, reason)
        entry.unload_task = asyncio.create_task(self._unload(entry, reason), name=f"unload-{name}")
        return await asyncio.shield(entry.unload_task)

    async def _unload(self, entry: ModelEntry, reason: str) -> UnloadReply:
        name = entry.spec.id
        t0 = time.perf_counter()
        if entry.batcher is not None:
            await entry.batcher.close()
            entry.batcher = None
        freed = 0
        worker_stopped = False
        worker = self.workers.worker
        try:
            if worker is not None:
                others = [e for e in self.entries.values() if e is not entry and e.state in HOLDING]
                if others:
                    reply = await worker.call("unload", {"model": name}, timeout_s=self.settings.load_timeout_s)
                    freed = int(reply["freed_bytes"])
                else:
                    freed = await self.workers.stop(f"last model ({name}) unloaded")
                    worker_stopped = True
        except (WorkerDied, WorkerError) as e:
            log.warning("model %s: unload met %s; the worker is gone, so is the model", name, e)
        except asyncio.TimeoutError:
            self.workers.kill(f"unload of {name} timed out")
        unload_s = time.perf_counter() - t0
        entry.device = None
        entry.memory_bytes = None
        entry.loaded_at = None
        self.parking.gone(entry)
        self.metrics.memory.labels(self.family, name).set(0)
        self.metrics.unload_seconds.labels(self.family, name).observe(unload_s)
        self.metrics.unloads.labels(self.family, name, reason).inc()
        if entry.state is S.UNLOADING:
            self._transition(entry, S.UNLOADED, f"freed {freed / 2**20:.0f} MiB in {unload_s:.2f} s")
        return UnloadReply(model=name, state=entry.state.value, freed_bytes=freed, unload_s=unload_s,
                           worker_stopped=worker_stopped)

    # worker --------------------------------------------------------------------------------------

    async def _stop_worker_if_empty(self) -> None:
        if not any(e.state in HOLDING for e in self.entries.values()):
            await self.workers.stop("no model resident")

    async def _kill_worker(self, why: str) -> None:
        """A hung worker: kill it; every model it held becomes FAILED through _on_worker_crash."""
        self.workers.kill(why)

    def _on_worker_crash(self, code: int | None) -> None:
        for entry in self.entries.values():
            if entry.state in (S.READY, S.UNLOADING, S.PARKING, S.PARKED):
                if entry.batcher is not None:
                    task = asyncio.ensure_future(entry.batcher.close(
                        Unavailable(f"the {self.family} worker died; retry", retry_after_s=1, code="worker_died")))
                    self._background.add(task)  # keep a reference until it is done
                    task.add_done_callback(self._background.discard)
                    entry.batcher = None
                entry.memory_bytes = None
                entry.device = None
                self.metrics.memory.labels(self.family, entry.spec.id).set(0)
                self._transition(entry, S.FAILED, f"worker process exited (code {code})")
                self.parking.gone(entry)
            # LOADING entries fail in _load, when their call raises WorkerDied.

    # views ---------------------------------------------------------------------------------------

    def describe(self, entry: ModelEntry) -> ModelRow:
        return self.parking.row(entry, model_row(entry))

    async def park(self, name: str) -> ParkReply:
        """Park ``name`` in host memory, or unload it where it cannot be parked (``modelhost.park``)."""
        return await self.parking.park(name)

    def snapshot(self) -> list[ModelRow]:
        return [self.describe(e) for e in self.entries.values()]

    @property
    def worker_pid(self) -> int | None:
        return self.workers.pid

