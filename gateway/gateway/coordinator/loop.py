"""The coordinator for real: one ``Core`` per device, driven from the gateway's event loop.

Every Core event is a synchronous call made on the one event loop thread, so the Core is never
touched by two coroutines at once (the run loop's ownership, without a queue hop). The actions a
Core returns are carried out here: grants resolve the waiting request's future, loads and unloads
run as tasks whose completion is fed back as the next event, an operator's unload resolves its
future when the Core answers it, and one timer per device wakes the Core for deadlines and
patience. Nothing here decides what an event means for the ledger: reading a service for
reconciliation only fetches its rows and hands them to ``Core.reconcile``, and reading a meter only
hands its figure to ``Core.rechecked``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Callable

from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import (
    DeadlineExceeded,
    InsufficientMemory,
    InternalError,
    ModelLeased,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RoundhouseError,
)
from modelhost.states import ModelUnavailable

from .actions import (Action, Fail, FailKind, Grant, Load, Recheck, Released, Unload, UnloadAnswer, UnloadOutcome,
                      UnloadReason, Wake)
from .core import Core
from .effects import Effects
from .footprints import FootprintStore
from .policy import INTERACTIVE, ModelInfo, PolicyConfig
from .readings import WorldReads
from .views import DeviceLedger, LedgerState, device_ledger, ledger_state

log = logging.getLogger(__name__)

# The one table from the ways the Core gives up on a request to the error its caller gets, and the
# Retry-After it carries (None: the class's own).
FAIL_ERRORS: dict[FailKind, tuple[type[RoundhouseError], float | None]] = {
    FailKind.QUEUE_FULL: (Overloaded, 2.0),  # 429
    FailKind.NOT_READY_IN_TIME: (ModelNotReady, 5.0),  # 503 model_not_ready
    FailKind.TOO_LARGE: (InsufficientMemory, None),  # 503 insufficient_memory, permanent
    FailKind.LOAD_FAILED: (ModelLoadFailed, None),  # 500; the service's own 502/503/504 when it was down or slow
    FailKind.DEADLINE: (DeadlineExceeded, None),  # 504
    # 503 model_not_ready, transient: the room comes back when the truth about it does (the periodic
    # reconciliation reads it again). Not InsufficientMemory: that one is permanent, and fails a bulk job.
    FailKind.MEMORY_UNVERIFIED: (ModelNotReady, 15.0),
    # 503 model_not_ready, transient for the same reason: memory not ours comes and goes (the meter is read
    # every meter_interval_s).
    FailKind.FOREIGN_MEMORY: (ModelNotReady, 10.0),
    # 503 insufficient_memory with a Retry-After: its load ran out of device memory after evictions.
    FailKind.OUT_OF_MEMORY: (InsufficientMemory, 30.0),
}


def no_gpu_reason(dev: str) -> str:
    return (f"the catalog puts it on {dev}, and NVML sees no such GPU here; to run every model on the CPU set "
            "GATEWAY_FORCE_DEVICE=cpu and each service's <FAMILY>_SVC_FORCE_DEVICE=cpu (make dev FORCE_DEVICE=cpu)")


def device_key(spec: ModelSpec) -> str:
    if not spec.wants_gpu:
        return "cpu"
    return spec.device if ":" in spec.device else "cuda:0"


class Coordinator(WorldReads):
    def __init__(
        self,
        catalog: Catalog,
        effects: Effects,
        budgets: dict[str, int],
        store: FootprintStore,
        *,
        config: PolicyConfig,
        max_queue: int,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        reserve_bytes: int = 0,
        meter_interval_s: float | None = 2.0,
    ) -> None:
        self.catalog = catalog
        self.effects = effects
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.cores: dict[str, Core] = {}
        self.device_of: dict[str, str] = {}
        by_device: dict[str, dict[str, ModelInfo]] = {}
        # A model on a device without a budget (a GPU that NVML does not see: budgets.memory_budgets) is
        # unavailable: listed with the reason, refused at once, never queued or loaded.
        self.unavailable: dict[str, str] = {}
        for spec in catalog.models:
            dev = device_key(spec)
            self.device_of[spec.id] = dev
            if dev not in budgets:
                self.unavailable[spec.id] = no_gpu_reason(dev)
                continue
            known = store.get(spec.id)
            footprint = int(known["peak_memory_bytes"]) if known else spec.memory_estimate_bytes
            load_s = float(known["load_s"]) if known else 2.0
            unload_s = store.unload_s(spec.id)
            by_device.setdefault(dev, {})[spec.id] = ModelInfo(
                spec.id, footprint, pin=spec.pin, priority=spec.priority, group=spec.group, load_s=load_s,
                unload_s=0.5 if unload_s is None else unload_s, family=spec.family, unpark_s=store.unpark_s(spec.id))
        for dev, models in by_device.items():
            self.cores[dev] = Core(dev, budgets[dev], models, config=config, max_queue=max_queue,
                                   reserve_bytes=reserve_bytes if dev != "cpu" else 0)
        if metrics is not None:
            metrics.ledger.cores = self.cores  # the ledger's gauges, read at scrape time
        self.meter_interval_s = meter_interval_s  # how often start() reads the meters (None: never)
        self._meter_failing: set[str] = set()
        self._ids = itertools.count(1)  # request ids and unload tickets
        self._waiting: dict[int, tuple[asyncio.Future, float, str]] = {}
        self._unloads: dict[int, asyncio.Future] = {}  # operator unload ticket -> its caller's future
        self._released: dict[str, Released | RoundhouseError] = {}  # each model's last release, for its tickets
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()
        self._reconciling: dict[str, asyncio.Task] = {}
        self.unverified_releases = 0
        self._load_errors: dict[str, RoundhouseError] = {}
        # Told of every batch of a Core's actions, after they are carried out (the events stream's observer);
        # called on the event loop thread: they must only look at the Core, never change it, never block.
        self.listeners: list[Callable[[str, Core, list[Action]], None]] = []

    # requests ------------------------------------------------------------------------------------

    async def acquire(self, model: str, *, lane: str = INTERACTIVE, timeout_s: float) -> None:
        """Return when ``model`` is resident and this request may use it (call ``release`` after).
        Raises 429 when its queue is full, 503 when it cannot be ready in time or fails to load,
        504 when its deadline passes while waiting. Never waits past ``timeout_s``."""
        dev, core = self._core(model)
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = (fut, self.clock(), lane)
        self._apply(dev, core.arrive(req_id, model, self.clock(), lane=lane, timeout_s=timeout_s))
        if fut.done():  # answered at once (a resident model): no timer, and no trip round the event loop
            del self._waiting[req_id]
            fut.result()  # raises the Core's error when it failed the request
            return
        try:
            # The Core fails the request at its deadline; the outer bound is only a backstop.
            async with asyncio.timeout(timeout_s + 5.0):
                await asyncio.shield(fut)
        except asyncio.TimeoutError:
            self._apply(dev, core.cancel(req_id, model, self.clock()))
            raise DeadlineExceeded(f"{model} was not ready within {timeout_s:.0f} s", code="deadline_exceeded")
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(model)  # granted, but the caller went away
            else:
                self._apply(dev, core.cancel(req_id, model, self.clock()))
            raise
        finally:
            self._waiting.pop(req_id, None)

    def release(self, model: str) -> None:
        dev = self.device_of[model]
        self._apply(dev, self.cores[dev].release(model, self.clock()))

    async def unload(self, model: str, *, drain: bool, timeout_s: float) -> Released | None:
        """An operator's unload, through the Core: ``model`` is drained (its requests in flight finish;
        with ``drain`` False and any in flight, 409 ``model_in_use`` and nothing changes), unloaded,
        and its release verified by the effects (what is not verified stays charged). Returns that
        release, or None when the model was not resident. Requests waiting for it stay queued and
        bring it back later. 504 when it takes longer than ``timeout_s``; the unload goes on
        regardless (and if the caller goes away)."""
        if model in self.unavailable:
            return None  # never loaded here
        dev, core = self._core(model)
        ticket = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._unloads[ticket] = fut
        try:
            self._apply(dev, core.request_unload(ticket, model, self.clock(), drain=drain))
            try:
                async with asyncio.timeout(timeout_s):
                    return await asyncio.shield(fut)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"{model} was not released within {timeout_s:.0f} s; its unload goes on") from None
        finally:
            self._unloads.pop(ticket, None)

    def vanished(self, model: str) -> None:
        """A service said ``model`` is not loaded: correct the ledger now, and re-read the service."""
        dev = self.device_of[model]
        self._apply(dev, self.cores[dev].vanished(model, self.clock()))
        self.schedule_reconcile(self.catalog.get(model).family)

    def _core(self, model: str) -> tuple[str, Core]:
        dev = self.device_of.get(model)
        if dev is None:
            raise ModelNotFound(f"model {model!r} is not in the catalog", param="model")
        if model in self.unavailable:
            raise ModelUnavailable(f"model {model} is unavailable: {self.unavailable[model]}", param="model")
        return dev, self.cores[dev]

    # actions -------------------------------------------------------------------------------------

    def _apply(self, dev: str, actions: list[Action]) -> None:
        core = self.cores[dev]
        for a in actions:
            if isinstance(a, Grant):
                entry = self._waiting.get(a.req_id)
                if entry is None or entry[0].done():
                    self._apply(dev, core.release(a.model, self.clock()))  # nobody to give it to
                    continue
                fut, arrived, lane = entry
                if self.metrics is not None:
                    self.metrics.series(self.metrics.queue_wait, a.model, lane).observe(self.clock() - arrived)
                fut.set_result(None)
            elif isinstance(a, Fail):
                entry = self._waiting.get(a.req_id)
                if self.metrics is not None:
                    self.metrics.rejections.labels(a.model, a.kind).inc()
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(self._error(a))
            elif isinstance(a, Load):
                if self.metrics is not None:
                    self.metrics.swaps.labels(dev).inc()
                self._spawn(self._load(dev, a.model), f"coordinator-load-{a.model}")
            elif isinstance(a, Unload):
                self._spawn(self._unload(dev, a.model, a.reason, a.park), f"coordinator-unload-{a.model}")
            elif isinstance(a, UnloadAnswer):
                self._answer(a)
            elif isinstance(a, Wake):
                self._arm(dev, a.at)
            elif isinstance(a, Recheck):
                self._spawn(self._recheck(dev, a.families), f"coordinator-recheck-{dev}")
        for listener in self.listeners:
            listener(dev, core, actions)

    def _error(self, a: Fail) -> RoundhouseError:
        if a.kind is FailKind.LOAD_FAILED:
            cause = self._load_errors.get(a.model)  # every waiter of this failed load gets it
            if cause is not None:
                return cause
        cls, retry_after_s = FAIL_ERRORS[a.kind]
        return cls(a.message, retry_after_s=retry_after_s)

    def _answer(self, a: UnloadAnswer) -> None:
        fut = self._unloads.get(a.ticket)
        if fut is None or fut.done():
            return  # its caller went away; the unload went on without it
        if a.outcome is UnloadOutcome.IN_USE:
            fut.set_exception(ModelLeased(f"{a.model} has requests in flight; unload with drain=true to wait for them"))
        elif a.outcome is UnloadOutcome.NOT_RESIDENT:
            fut.set_result(None)
        else:
            released = self._released.get(a.model)
            if isinstance(released, RoundhouseError):
                fut.set_exception(released)
            else:
                fut.set_result(released)

    def _arm(self, dev: str, at: float) -> None:
        handle = self._timers.get(dev)
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - self.clock())
        if handle is not None and not handle.cancelled() and handle.when() <= loop.time() + delay:
            return  # an earlier wake is already set
        if handle is not None:
            handle.cancel()
        self._timers[dev] = loop.call_later(delay, self._tick, dev)

    def _tick(self, dev: str) -> None:
        self._timers.pop(dev, None)
        self._apply(dev, self.cores[dev].tick(self.clock()))

    def _spawn(self, coro, name: str) -> None:  # noqa: ANN001
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, dev: str, model: str) -> None:
        spec = self.catalog.get(model)
        core = self.cores[dev]
        t0 = time.monotonic()
        try:
            loaded = await self.effects.load(spec)
        except RoundhouseError as e:
            log.warning("%s: load of %s failed: %s", dev, model, e.message)
            if self.metrics is not None:
                self.metrics.loads.labels(model, "failed").inc()
            if e.code == "out_of_memory":  # the device had no room for it: the Core evicts and retries once
                self._apply(dev, core.load_done(model, self.clock(), ok=False, out_of_memory=True))
                self.schedule_reconcile(spec.family)
                return
            if e.status in (502, 503, 504):
                self._load_errors[model] = e  # the service is down or slow: its waiters get that, not a 500
            else:
                self._load_errors.pop(model, None)
            self._apply(dev, core.load_done(model, self.clock(), ok=False, reason=f"{model} failed to load: {e.message}"))
            self.schedule_reconcile(spec.family)
            return
        except Exception as e:  # never leave the Core believing a load is in flight
            log.exception("%s: load of %s failed unexpectedly", dev, model)
            self._load_errors.pop(model, None)
            self._apply(dev, core.load_done(model, self.clock(), ok=False, reason=f"{model} failed to load: {type(e).__name__}"))
            return
        self._load_errors.pop(model, None)
        if loaded.unparked:  # an un-park: its own time, the load's stays as measured (``parking``)
            self.store.record_unpark(model, loaded.load_s)
        else:
            self.store.record(model, peak_memory_bytes=loaded.peak_memory_bytes, load_s=loaded.load_s, device=loaded.device)
        core.models[model].parkable = bool(loaded.parkable)
        if self.metrics is not None:
            self.metrics.loads.labels(model, "loaded").inc()
            self.metrics.load_seconds.labels(model).observe(time.monotonic() - t0)
        log.info("%s: %s ready, measured peak %.0f MiB (ledger %.0f / %.0f MiB)", dev, model, loaded.peak_memory_bytes / 2**20,
                 (core.used_bytes() - core.loading_bytes + loaded.peak_memory_bytes) / 2**20, core.budget_bytes / 2**20)
        self._apply(dev, core.load_done(model, self.clock(), ok=True, peak_memory_bytes=loaded.peak_memory_bytes,
                                        load_s=loaded.load_s, unparked=loaded.unparked))

    async def _unload(self, dev: str, model: str, reason: UnloadReason, park: bool = False) -> None:
        """Carry out an ``Unload``: the effects unload and verify the release; ``unload_done`` then
        drops the charge, or keeps what is unverified (and answers the operator unloads waiting)."""
        spec = self.catalog.get(model)
        core = self.cores[dev]
        charged = core.unloading.get(model, 0)
        if self.metrics is not None:
            self.metrics.evictions.labels(model, reason).inc()
        t0 = time.monotonic()
        try:
            released = await (self.effects.unload(spec, charged, park=True) if park else self.effects.unload(spec, charged))
        except Exception as e:  # never leave the Core believing an unload is in flight
            if isinstance(e, RoundhouseError):
                log.error("%s: unload of %s failed (%s); reconciling %s", dev, model, e.message, spec.family)
                self._released[model] = e
            else:
                log.exception("%s: unload of %s failed unexpectedly; reconciling %s", dev, model, spec.family)
                self._released[model] = InternalError(f"the unload of {model} failed ({type(e).__name__})")
            self._count_unverified(model)
            # Nobody knows what it still holds: its charge stays, unverified, and the service is read
            # at once (holding it: charged as resident again; holding nothing: its worker is gone).
            failed = Released(0, False, time.monotonic() - t0, f"the unload failed: {type(e).__name__}", unloaded=False)
            self._apply(dev, core.unload_done(model, self.clock(), failed))
            await self.reconcile(spec.family)
            return
        if not released.verified:
            self._count_unverified(model)
            log.error("%s: release of %s NOT verified: %s", dev, model, released.detail)
        else:
            log.info("%s: %s released %.0f MiB in %.2f s (%s)", dev, model, released.freed_bytes / 2**20,
                     released.seconds, released.detail)
        if self.metrics is not None:
            self.metrics.release_seconds.labels(model).observe(released.seconds)
        self._released[model] = released
        if released.verified and released.unloaded:
            self.store.record_unload(model, released.seconds)  # the Core learns it from ``released`` too
        self._apply(dev, core.unload_done(model, self.clock(), released))

    def _count_unverified(self, model: str) -> None:
        self.unverified_releases += 1
        if self.metrics is not None:
            self.metrics.release_unverified.labels(model).inc()

    def start(self) -> None:
        """Read the meters every ``meter_interval_s`` (memory not ours, the room left) until ``close``."""
        if self.meter_interval_s and any(d != "cpu" for d in self.cores):
            self._spawn(self._meter_forever(self.meter_interval_s), "coordinator-meters")

    async def close(self) -> None:
        for h in self._timers.values():
            h.cancel()
        for t in list(self._tasks) + list(self._reconciling.values()):
            t.cancel()

    # views ---------------------------------------------------------------------------------------

    def view(self) -> dict[str, DeviceLedger]:
        return {dev: device_ledger(core, self.store, self.clock()) for dev, core in self.cores.items()}

    def requests_active(self, dev: str) -> int:
        """Requests on ``dev`` between ``acquire`` and ``release``: granted and in flight, or waiting.
        The jobs runner compares it with its own count to see interactive traffic."""
        core = self.cores.get(dev)
        if core is None:
            return 0
        return sum(r.in_flight for r in core.resident.values()) + sum(len(q) for q in core.queues.values())

    def model_state(self, model: str) -> LedgerState:
        if model in self.unavailable:
            return LedgerState(ledger_state="unavailable", queue_depth=0, device_ledger=self.device_of[model])
        dev, core = self._core(model)
        return ledger_state(core, model)
