"""The coordinator for real: one ``Core`` per device, driven from the gateway's event loop.

Every Core event is a synchronous call made on the one event loop thread, so the Core is never
touched by two coroutines at once (the run loop's ownership, without a queue hop). The actions a
Core returns are carried out here: grants resolve the waiting request's future, loads and unloads
run as tasks whose completion is fed back as the next event, and one timer per device wakes the
Core for deadlines and patience.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, Callable

from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import DeadlineExceeded, ModelNotFound, Overloaded, RoundhouseError, Unavailable

from .core import Action, Core, Fail, Grant, Load, Unload, Wake
from .effects import Effects
from .footprints import FootprintStore
from .policy import INTERACTIVE, ModelInfo, PolicyConfig

log = logging.getLogger(__name__)


class ModelLoadFailed(RoundhouseError):
    status, type, code = 500, "server_error", "model_load_failed"


class InsufficientMemory(Unavailable):
    code = "insufficient_memory"


def device_key(spec: ModelSpec) -> str:
    if not spec.wants_gpu:
        return "cpu"
    return spec.device if ":" in spec.device else "cuda:0"


class Coordinator:
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
    ) -> None:
        self.catalog = catalog
        self.effects = effects
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.cores: dict[str, Core] = {}
        self.device_of: dict[str, str] = {}
        by_device: dict[str, dict[str, ModelInfo]] = {}
        for spec in catalog.models:
            dev = device_key(spec)
            self.device_of[spec.id] = dev
            known = store.get(spec.id)
            footprint = int(known["peak_memory_bytes"]) if known else spec.memory_estimate_bytes
            load_s = float(known["load_s"]) if known else 2.0
            by_device.setdefault(dev, {})[spec.id] = ModelInfo(
                spec.id, footprint, pin=spec.pin, priority=spec.priority, group=spec.group, load_s=load_s)
        for dev, models in by_device.items():
            if dev not in budgets:
                raise ValueError(f"no memory budget for device {dev}")
            self.cores[dev] = Core(dev, budgets[dev], models, config=config, max_queue=max_queue)
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future, float, str]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()
        self._reconciling: dict[str, asyncio.Task] = {}
        self.unverified_releases = 0
        self._load_errors: dict[str, RoundhouseError] = {}

    # requests ------------------------------------------------------------------------------------

    async def acquire(self, model: str, *, lane: str = INTERACTIVE, timeout_s: float) -> None:
        """Return when ``model`` is resident and this request may use it (call ``release`` after).
        Raises 429 when its queue is full, 503 when it cannot be ready in time or fails to load,
        504 when its deadline passes while waiting. Never waits past ``timeout_s``."""
        dev = self.device_of.get(model)
        if dev is None:
            raise ModelNotFound(f"model {model!r} is not in the catalog", param="model")
        core = self.cores[dev]
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = (fut, self.clock(), lane)
        self._apply(dev, core.arrive(req_id, model, self.clock(), lane=lane, timeout_s=timeout_s))
        try:
            # The Core fails the request at its deadline; the outer bound is only a backstop.
            await asyncio.wait_for(asyncio.shield(fut), timeout_s + 5.0)
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

    def request_unload(self, model: str) -> None:
        dev = self.device_of[model]
        self._apply(dev, self.cores[dev].request_unload(model, self.clock()))

    def vanished(self, model: str) -> None:
        """A service said ``model`` is not loaded: correct the ledger now, and re-read the service."""
        dev = self.device_of[model]
        self._apply(dev, self.cores[dev].vanished(model, self.clock()))
        self.schedule_reconcile(self.catalog.get(model).family)

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
                    self.metrics.queue_wait.labels(a.model, lane).observe(self.clock() - arrived)
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
                self._spawn(self._unload(dev, a.model, a.reason), f"coordinator-unload-{a.model}")
            elif isinstance(a, Wake):
                self._arm(dev, a.at)
        if self.metrics is not None:
            self.metrics.observe_core(core)

    def _error(self, a: Fail) -> RoundhouseError:
        if a.kind == "queue_full":
            return Overloaded(a.message + "; try again shortly", retry_after_s=2)
        if a.kind == "too_large":
            return InsufficientMemory(a.message)
        if a.kind == "load_failed":
            cause = self._load_errors.get(a.model)  # every waiter of this failed load gets it
            if cause is not None:
                return cause
            return ModelLoadFailed(a.message)
        if a.kind == "deadline":
            return DeadlineExceeded(a.message, code="deadline_exceeded")
        return Unavailable(a.message, retry_after_s=5, code="model_not_ready")

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
        self.store.record(model, peak_memory_bytes=loaded.peak_memory_bytes, load_s=loaded.load_s, device=loaded.device)
        if self.metrics is not None:
            self.metrics.loads.labels(model, "loaded").inc()
            self.metrics.load_seconds.labels(model).observe(time.monotonic() - t0)
        log.info("%s: %s ready, measured peak %.0f MiB (ledger %.0f / %.0f MiB)", dev, model, loaded.peak_memory_bytes / 2**20,
                 (core.used_bytes() - core.loading_bytes + loaded.peak_memory_bytes) / 2**20, core.budget_bytes / 2**20)
        self._apply(dev, core.load_done(model, self.clock(), ok=True, peak_memory_bytes=loaded.peak_memory_bytes, load_s=loaded.load_s))

    async def _unload(self, dev: str, model: str, reason: str) -> None:
        spec = self.catalog.get(model)
        core = self.cores[dev]
        charged = core.unloading.get(model, 0)
        if self.metrics is not None:
            self.metrics.evictions.labels(model, reason).inc()
        try:
            released = await self.effects.unload(spec, charged)
        except RoundhouseError as e:
            # The service is gone or broken: whatever it held is being reconciled; count it.
            log.error("%s: unload of %s failed (%s); reconciling %s", dev, model, e.message, spec.family)
            self.unverified_releases += 1
            if self.metrics is not None:
                self.metrics.release_unverified.labels(model).inc()
            await self.reconcile(spec.family)
            self._apply(dev, core.unload_done(model, self.clock()))
            return
        if not released.verified:
            self.unverified_releases += 1
            log.error("%s: release of %s NOT verified: %s", dev, model, released.detail)
            if self.metrics is not None:
                self.metrics.release_unverified.labels(model).inc()
        else:
            log.info("%s: %s released %.0f MiB in %.2f s (%s)", dev, model, released.freed_bytes / 2**20,
                     released.seconds, released.detail)
        if self.metrics is not None:
            self.metrics.release_seconds.labels(model).observe(released.seconds)
        # What the worker kept (a shared CUDA context, an imported framework) stays charged to a
        # model still resident in the same service.
        leftover = max(0, charged - released.freed_bytes)
        heir = next((m for m in core.resident if self.catalog.get(m).family == spec.family), None)
        self._apply(dev, core.unload_done(model, self.clock(), leftover_bytes=leftover if heir else 0, heir=heir))

    # reconciliation ------------------------------------------------------------------------------

    def schedule_reconcile(self, family: str) -> None:
        task = self._reconciling.get(family)
        if task is None or task.done():
            self._reconciling[family] = asyncio.create_task(self.reconcile(family), name=f"reconcile-{family}")

    async def reconcile(self, family: str) -> None:
        """Read the service's own view and correct the ledger: models it does not hold leave the
        ledger; models it holds that the ledger missed are charged (and unloaded if they do not fit)."""
        try:
            rows = await self.effects.models(family)
        except RoundhouseError as e:
            log.warning("reconcile %s: service unreachable (%s); its models leave the ledger", family, e.message)
            rows = []
        live = {r.id: r for r in rows if r.resident}
        for dev, core in self.cores.items():
            now = self.clock()
            for model in list(core.resident):
                if self.catalog.get(model).family == family and model not in live and model != core.loading:
                    log.warning("reconcile %s: %s is not loaded at its service; the ledger forgets it", family, model)
                    self._apply(dev, core.vanished(model, now))
            for model, row in live.items():
                if self.device_of.get(model) == dev and row.state == "ready" and model not in core.resident \
                        and model != core.loading and model not in core.unloading:
                    charged = row.peak_memory_bytes or row.memory_bytes or core.models[model].footprint_bytes
                    log.warning("reconcile %s: %s is loaded at its service; the ledger charges %.0f MiB", family, model, charged / 2**20)
                    self._apply(dev, core.appeared(model, charged, now))

    async def reconcile_all(self) -> None:
        families = sorted({s.family for s in self.catalog.models})
        await asyncio.gather(*(self.reconcile(f) for f in families), return_exceptions=True)

    async def close(self) -> None:
        for h in self._timers.values():
            h.cancel()
        for t in list(self._tasks) + list(self._reconciling.values()):
            t.cancel()

    # views ---------------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        out = {}
        for dev, core in self.cores.items():
            out[dev] = {
                "budget_bytes": core.budget_bytes,
                "used_bytes": core.used_bytes(),
                "loading": core.loading,
                "unloading": sorted(core.unloading),
                "swap": None if core.swap is None else {"load": core.swap.load, "evict": list(core.swap.evict)},
                "swaps": core.swaps,
                "resident": {m: {"charged_bytes": r.charged_bytes, "in_flight": r.in_flight, "draining": r.draining,
                                 "idle_s": round(self.clock() - r.last_used, 3)} for m, r in core.resident.items()},
                "queues": {m: len(q) for m, q in core.queues.items() if q},
                "footprints": {m: {"bytes": i.footprint_bytes, "measured": self.store.get(m) is not None}
                               for m, i in core.models.items()},
            }
        return out

    def requests_active(self, dev: str) -> int:
        """Requests on ``dev`` between ``acquire`` and ``release``: granted and in flight, or waiting.
        The jobs runner compares it with its own count to see interactive traffic."""
        core = self.cores.get(dev)
        if core is None:
            return 0
        return sum(r.in_flight for r in core.resident.values()) + sum(len(q) for q in core.queues.values())

    def model_state(self, model: str) -> dict[str, Any]:
        dev = self.device_of[model]
        core = self.cores[dev]
        return {"ledger_state": core.state_of(model), "queue_depth": len(core.queues[model]), "device_ledger": dev}
