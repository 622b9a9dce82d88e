"""What publishes to the ``EventHub``: the coordinator's observer and the jobs' progress reader.

``CoordinatorObserver`` is called by ``Coordinator._apply`` after every batch of a Core's actions,
synchronously on the event loop thread. It diffs each model's ledger state against the last it saw
(a dict lookup per model of that device: the Core's ``state_of``), publishes a ``ModelStateEvent``
per change, and follows swaps: a ``Load`` with the Core's swap plan in flight names what was evicted
for what; the victims' release times and the load's time are measured here, from the state changes
(unloading → unloaded, loading → ready), on the coordinator's own clock. It never changes the Core.

``JobProgress`` is told of a job's change by ``JobEvents`` (``notify``: a set insertion, nothing
else); one task reads the changed jobs at most every ``interval_s`` (the store runs on its own
thread) and publishes a ``JobEvent`` each, however many subscribers there are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .coordinator.actions import Action, Load, Unload
from .coordinator.core import Core
from .events import EventHub, EvictedModel, JobEvent, ModelStateEvent, SwapEvent

log = logging.getLogger(__name__)


class _Swap:
    def __init__(self, device: str, load: str, evicted: list[EvictedModel], started: float) -> None:
        self.device = device
        self.load = load
        self.evicted = evicted
        self.started = started  # the coordinator's clock, when the Load was sent
        self.started_at = time.time()


class CoordinatorObserver:
    def __init__(self, hub: EventHub, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.clock = clock
        self.states: dict[str, str] = {}
        self.unload_started: dict[str, tuple[float, str]] = {}  # model -> (when, reason)
        self.last_release: dict[str, EvictedModel] = {}  # model -> its last eviction, with its release time
        self.swaps: dict[str, _Swap] = {}  # device -> the swap whose load is in flight
        self.keys: dict[str, tuple] = {}  # device -> what its states were last scanned at

    def seeded(self, cores: dict[str, Core]) -> "CoordinatorObserver":
        """Start from the ledgers as they are (after the first reconciliation), so no change is invented."""
        for core in cores.values():
            self.states.update((m, core.state_of(m)) for m in core.models)
        return self

    def __call__(self, device: str, core: Core, actions: list[Action]) -> None:
        try:
            self._observe(device, core, actions)
        except Exception:  # noqa: BLE001 - never let the events stream break the coordinator's run loop
            log.exception("events: the coordinator observer failed on %s; its events may be missing", device)

    def _observe(self, device: str, core: Core, actions: list[Action]) -> None:
        # The hot path is a grant or a release of a resident model (twice per request): nothing that
        # changes a state. A state changes only with one of these (loading, unloading and residency:
        # the epoch; draining: a swap planned or an unload pending), so unchanged, nothing is scanned.
        key = (core.epoch, core.loading, id(core.swap), len(core.unloading), len(core.pending_unloads))
        if key == self.keys.get(device) and not any(isinstance(a, (Load, Unload)) for a in actions):
            return
        self.keys[device] = key
        now = self.clock()
        reasons = {a.model: str(a.reason) for a in actions if isinstance(a, Unload)}
        for model in core.models:
            state = core.state_of(model)
            before = self.states.get(model, "unloaded")
            if state == before:
                continue
            self.states[model] = state
            if state == "unloading":
                self.unload_started[model] = (now, reasons.get(model, "swap"))
            elif before == "unloading":
                t0, reason = self.unload_started.pop(model, (now, "swap"))
                self.last_release[model] = EvictedModel(model=model, reason=reason, release_s=round(now - t0, 3))
            self.hub.publish(ModelStateEvent(model=model, device=device, state=state, previous=before,
                                             reason=reasons.get(model)))
            if before == "loading":
                self._load_over(device, model, ok=state != "unloaded", now=now)
        for a in actions:
            if isinstance(a, Load):
                evict = core.swap.evict if core.swap is not None and core.swap.load == a.model else ()
                evicted = [self.last_release.get(m) or EvictedModel(model=m, reason="swap") for m in evict]
                swap = _Swap(device, a.model, evicted, now)
                self.swaps[device] = swap
                self.hub.publish(SwapEvent(device=device, load=a.model, evicted=evicted, phase="started",
                                           started_at=swap.started_at))

    def _load_over(self, device: str, model: str, *, ok: bool, now: float) -> None:
        swap = self.swaps.get(device)
        if swap is None or swap.load != model:
            return
        del self.swaps[device]
        self.hub.publish(SwapEvent(device=device, load=model, evicted=swap.evicted, phase="done" if ok else "failed",
                                   load_s=round(now - swap.started, 3) if ok else None, started_at=swap.started_at))


class JobProgress:
    """One reader of changed jobs for every subscriber (see the module's docstring)."""

    def __init__(self, hub: EventHub, status: Callable[[str], Any], *, interval_s: float = 0.2) -> None:
        self.hub = hub
        self.status = status  # async job_id -> the job's view (Jobs.status); raises NotFound when deleted
        self.interval_s = interval_s
        self.changed: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def notify(self, job_id: str) -> None:
        self.changed.add(job_id)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="events-job-progress")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.hub.subscribers:
                self.changed.clear()  # nobody watches: nothing to read
                continue
            jobs, self.changed = self.changed, set()
            for job_id in jobs:
                try:
                    view = await self.status(job_id)
                except Exception as e:  # noqa: BLE001 - deleted (NotFound), or the store failed: the next change tells
                    log.debug("job %s not published: %s", job_id, e)
                    continue
                self.hub.publish(JobEvent(job=view["id"], task=view["task"], model=view["model"], state=view["state"],
                                          progress=view["progress"], counts=view["counts"],
                                          rate_per_s=view["rate_per_s"], eta_s=view["eta_s"]))
            await asyncio.sleep(self.interval_s)
