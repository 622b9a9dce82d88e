"""The coordinator's state and its transitions: one device's ledger, queues and the swap in flight.

``Core`` is synchronous and owns every piece of state. The world talks to it only through events
(``arrive``, ``release``, ``load_done``, ``unload_done``, ``tick``, ``vanished``, ``appeared``); each
returns the actions the world must carry out (grant or fail a request, start a load or an unload,
wake me at time t). The asyncio run loop (``loop.py``) and the virtual-clock simulator (``sim.py``)
are the two worlds, so the same code is tested on recorded traces and runs for real.

Invariants (checked by ``check_invariants`` after every event in the tests):

1. The ledger never exceeds the budget: resident charges + the load in flight + releases not yet
   verified ≤ budget. A load starts only after its evictions are verified released. The one way
   past it is a first measurement bigger than the estimate a model was admitted with: the ledger
   then charges the truth and at once drains and evicts others until it is back inside.
2. At most one swap is in flight per device; a model is never loaded twice (a model is resident,
   loading, or neither — never both), and requests arriving during its load join it.
3. A model with requests in flight is never unloaded; a victim is drained first (no new grants,
   in-flight ones finish) and unloaded when its last lease is released.
4. Every request ends exactly once: granted, or failed with a kind (queue_full → 429,
   not_ready_in_time / too_large / load_failed → 503/500, deadline → 504). A timer is always set
   while anyone waits, so nothing hangs.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

from .policy import (
    BULK,
    choose_victims,
    ModelInfo,
    PolicyConfig,
    Resident,
    Snapshot,
    SwapPlan,
    Waiter,
    next_patience_deadline,
    plan_swap,
)

log = logging.getLogger(__name__)

# Actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    req_id: int
    model: str


@dataclass(frozen=True)
class Fail:
    req_id: int
    model: str
    kind: str  # queue_full, not_ready_in_time, too_large, load_failed, deadline
    message: str


@dataclass(frozen=True)
class Load:
    model: str


@dataclass(frozen=True)
class Unload:
    model: str
    reason: str  # swap, group, vanished


@dataclass(frozen=True)
class Wake:
    at: float


Action = Grant | Fail | Load | Unload | Wake


class InvariantBroken(AssertionError):
    pass


class Core:
    def __init__(self, device: str, budget_bytes: int, models: dict[str, ModelInfo], *,
                 config: PolicyConfig | None = None, max_queue: int = 256) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.models = models
        self.config = config or PolicyConfig()
        self.max_queue = max_queue
        self.resident: dict[str, Resident] = {}
        self.queues: dict[str, collections.deque[Waiter]] = {m: collections.deque() for m in models}
        self.loading: str | None = None
        self.loading_bytes = 0
        self.unloading: dict[str, int] = {}  # model -> charged bytes until its release is verified
        self.swap: SwapPlan | None = None
        self.pending_unloads: dict[str, str] = {}  # model -> reason: asked for by an operator, or over_budget
        self.over_budget_evictions = 0
        self.swaps = 0  # committed swaps (loads started), for metrics and the benchmark
        self.evictions: collections.Counter[str] = collections.Counter()

    # views ---------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        return sum(r.charged_bytes for r in self.resident.values()) + self.loading_bytes + sum(self.unloading.values())

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(now=now, budget_bytes=self.budget_bytes, models=self.models, resident=self.resident,
                        queues={m: list(q) for m, q in self.queues.items()},
                        reserved_bytes=self.loading_bytes + sum(self.unloading.values()), config=self.config)

    def state_of(self, model: str) -> str:
        if model == self.loading:
            return "loading"
        if model in self.unloading:
            return "unloading"
        r = self.resident.get(model)
        if r is None:
            return "unloaded"
        return "draining" if r.draining else "ready"

    def check_invariants(self) -> None:
        if self.used_bytes() > self.budget_bytes:
            raise InvariantBroken(f"{self.device}: ledger {self.used_bytes()} > budget {self.budget_bytes}")
        if self.loading is not None and (self.loading in self.resident or self.loading in self.unloading):
            raise InvariantBroken(f"{self.loading} is loading and resident/unloading at once")
        for m in self.unloading:
            if m in self.resident:
                raise InvariantBroken(f"{m} is unloading and resident at once")
        for m, q in self.queues.items():
            r = self.resident.get(m)
            if q and r is not None and not r.draining:
                raise InvariantBroken(f"{m} is ready but has {len(q)} waiting requests")

    # events --------------------------------------------------------------------------------------

    def arrive(self, req_id: int, model: str, now: float, *, lane: str = BULK, timeout_s: float = 300.0) -> list[Action]:
        info = self.models[model]
        r = self.resident.get(model)
        if r is not None and not r.draining:
            r.in_flight += 1
            r.last_used = now
            return [Grant(req_id, model)]
        if info.footprint_bytes > self.budget_bytes:
            return [Fail(req_id, model, "too_large",
                         f"{model} needs {info.footprint_bytes / 2**20:.0f} MiB but the {self.device} budget is "
                         f"{self.budget_bytes / 2**20:.0f} MiB")]
        q = self.queues[model]
        if len(q) >= self.max_queue:
            return [Fail(req_id, model, "queue_full", f"{len(q)} requests already wait for {model}")]
        eta = 0.0 if model == self.loading else info.load_s
        if eta > timeout_s:
            return [Fail(req_id, model, "not_ready_in_time",
                         f"{model} takes about {info.load_s:.0f} s to load, longer than the request's {timeout_s:.0f} s deadline")]
        q.append(Waiter(req_id, model, lane, now, now + timeout_s))
        return self._step(now)

    def release(self, model: str, now: float) -> list[Action]:
        r = self.resident.get(model)
        if r is not None:
            r.in_flight = max(0, r.in_flight - 1)
            r.last_used = now
        return self._step(now)

    def load_done(self, model: str, now: float, *, ok: bool, peak_memory_bytes: int | None = None,
                  load_s: float | None = None, reason: str = "") -> list[Action]:
        if model != self.loading:
            log.warning("%s: load_done for %s, which was not loading; ignored", self.device, model)
            return self._step(now)
        self.loading = None
        self.loading_bytes = 0
        self.swap = None
        info = self.models[model]
        actions: list[Action] = []
        if ok:
            charged = peak_memory_bytes if peak_memory_bytes else info.footprint_bytes
            info.footprint_bytes = max(charged, 1)
            if load_s is not None:
                info.load_s = load_s
            self.resident[model] = Resident(charged_bytes=charged, last_used=now, loaded_at=now)
            over = self.used_bytes() - self.budget_bytes
            if over > 0:
                # Its first measurement came out bigger than the estimate it was admitted with. The
                # ledger charges the truth, so it is over the budget: evict others at once (drained
                # first, as always) until it is back inside. Its own waiters are served meanwhile.
                victims = choose_victims(self.snapshot(now), over, model, allow_busy=True) or ()
                log.warning("%s: %s measured %.0f MiB, %.0f MiB over the budget; evicting %s", self.device, model,
                            charged / 2**20, over / 2**20, list(victims) or "nothing (all pinned)")
                for victim in victims:
                    self.resident[victim].draining = True
                    self.pending_unloads[victim] = "over_budget"
                    self.over_budget_evictions += 1
        else:
            for w in self.queues[model]:
                actions.append(Fail(w.req_id, model, "load_failed", reason or f"{model} failed to load"))
            self.queues[model].clear()
        return actions + self._step(now)

    def unload_done(self, model: str, now: float, *, leftover_bytes: int = 0, heir: str | None = None) -> list[Action]:
        """``model``'s memory is released. ``leftover_bytes`` of its charge stayed with its worker
        (a process-wide cost such as a CUDA context or an imported framework, first charged to
        the first model loaded): they move to ``heir``, a model still resident in that worker, so
        the ledger keeps telling the truth."""
        self.unloading.pop(model, None)
        if heir is not None and heir in self.resident and leftover_bytes > 0:
            self.resident[heir].charged_bytes += leftover_bytes
        return self._step(now)

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for model, q in self.queues.items():
            keep = collections.deque()
            for w in q:
                if now >= w.deadline:
                    actions.append(Fail(w.req_id, model, "deadline", f"{model} was not ready within the request's deadline"))
                else:
                    keep.append(w)
            self.queues[model] = keep
        return actions + self._step(now)

    def cancel(self, req_id: int, model: str, now: float) -> list[Action]:
        """The caller of a waiting request went away: forget it."""
        q = self.queues[model]
        self.queues[model] = collections.deque(w for w in q if w.req_id != req_id)
        return self._step(now)

    def request_unload(self, model: str, now: float) -> list[Action]:
        """An operator asked to unload ``model``: drain it and unload it once idle. Its waiting
        requests stay queued and bring it back later."""
        r = self.resident.get(model)
        if r is not None:
            r.draining = True
            self.pending_unloads[model] = "request"
        return self._step(now)

    def vanished(self, model: str, now: float) -> list[Action]:
        """Reconciliation: the service says ``model`` is not loaded, though the ledger had it."""
        self.resident.pop(model, None)
        if self.swap is not None and model in self.swap.evict:
            pass  # already gone: the swap goes on without it
        return self._step(now)

    def appeared(self, model: str, charged_bytes: int, now: float) -> list[Action]:
        """Reconciliation: the service has ``model`` loaded though the ledger did not know.
        It is charged; if that breaks the budget, it is unloaded at once."""
        if model in self.resident or model == self.loading or model in self.unloading:
            return self._step(now)
        self.resident[model] = Resident(charged_bytes=charged_bytes, last_used=now, loaded_at=now)
        actions: list[Action] = []
        if self.used_bytes() > self.budget_bytes and self.resident[model].in_flight == 0:
            r = self.resident.pop(model)
            self.unloading[model] = 0  # its bytes are already outside the budget; only wait for it
            self.evictions["reconcile"] += 1
            del r
            actions.append(Unload(model, "reconcile"))
        return actions + self._step(now)

    # the step ------------------------------------------------------------------------------------

    def _step(self, now: float) -> list[Action]:
        actions: list[Action] = []
        # 1. Resident, non-draining models serve their waiters at once.
        for model, r in self.resident.items():
            q = self.queues[model]
            if r.draining or not q:
                continue
            while q:
                w = q.popleft()
                r.in_flight += 1
                r.last_used = now
                actions.append(Grant(w.req_id, model))
        # 2. Operator and over-budget unloads: once drained, whatever the swap state (they only free memory).
        for model, reason in list(self.pending_unloads.items()):
            r = self.resident.get(model)
            if r is None:
                del self.pending_unloads[model]
            elif r.in_flight == 0 and model not in (self.swap.evict if self.swap else ()):
                del self.pending_unloads[model]
                self.resident.pop(model)
                self.unloading[model] = r.charged_bytes
                self.evictions[reason] += 1
                actions.append(Unload(model, reason))
        # 3. Start a swap when none is in flight.
        if self.swap is None and self.loading is None and not self.unloading:
            plan = plan_swap(self.snapshot(now))
            if plan is not None:
                self.swap = plan
                for victim in plan.evict:
                    self.resident[victim].draining = True
                log.info("%s: swap in %s, evicting %s%s", self.device, plan.load, list(plan.evict) or "nothing",
                         " after draining" if plan.wait_for_drain else "")
        # 4. Move the swap in flight along: unload drained victims, then load once all are released.
        if self.swap is not None and self.loading is None:
            for victim in self.swap.evict:
                r = self.resident.get(victim)
                if r is not None and r.in_flight == 0:
                    self.resident.pop(victim)
                    self.unloading[victim] = r.charged_bytes
                    self.evictions["swap"] += 1
                    actions.append(Unload(victim, "swap"))
            victims_left = any(v in self.resident for v in self.swap.evict)
            if not victims_left and not self.unloading:
                model = self.swap.load
                info = self.models[model]
                if not self.queues[model]:
                    self.swap = None  # its waiters went away (deadline) meanwhile
                elif info.footprint_bytes <= self.budget_bytes - self.used_bytes():
                    self.loading = model
                    self.loading_bytes = info.footprint_bytes
                    self.swaps += 1
                    actions.append(Load(model))
                else:
                    self.swap = None  # numbers changed under us (a measurement); plan again
                    return actions + self._step(now)
        # 5. A timer whenever anyone waits: deadlines, patience, idle grace.
        wake = self._next_wake(now)
        if wake is not None:
            actions.append(Wake(wake))
        return actions

    def _next_wake(self, now: float) -> float | None:
        times = [w.deadline for q in self.queues.values() for w in q]
        if any(self.queues.values()):
            p = next_patience_deadline(self.snapshot(now))
            if p is not None:
                times.append(p)
        future = [t for t in times if t > now]
        return min(future) if future else None
