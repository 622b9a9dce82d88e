"""The coordinator's state and its transitions: one device's ledger, queues and the swap in flight.

``Core`` is synchronous and owns every piece of state. The world talks to it only through events
(``arrive``, ``release``, ``cancel``, ``tick``, ``load_done``, ``unload_done``, ``request_unload``,
``vanished``, ``reconcile``, ``rechecked``, ``metered``, ``forget_unverified``); each returns the
actions the world must carry out (grant or fail a request, start a load or an unload, answer an
operator's unload, re-read the truth, wake me at time t). The asyncio run loop (``loop.py``) and
the virtual-clock simulator (``sim.py``) are the two worlds. Every decision about what the world's
news means for the ledger is made here (and in ``reconciliation.py`` and ``foreign.py``).

Invariants (checked by ``check_invariants`` after every event in the tests):

1. The ledger never exceeds the budget: resident charges + the load in flight + releases in flight
   + what releases left unverified ≤ budget. A load starts only after its evictions are released.
   The one way past it is a first measurement bigger than the estimate a model was admitted with:
   the ledger then charges the truth and at once drains and evicts others until it is back inside.
   Bytes no one verified released stay charged until the truth is known (``unverified.py``). A load
   also fits the device's physical room beside the memory not ours (``foreign.py``).
2. At most one swap is in flight per device; a model is never loaded twice (a model is resident,
   loading, unloading, or none of them — never two), and requests arriving during its load join it.
3. A model with requests in flight is never unloaded; a victim is drained first (no new grants,
   in-flight ones finish) and unloaded when its last lease is released. An operator's unload is
   the same path: drain, ``Unload``, charged as unloading until ``unload_done``.
4. Every request ends exactly once: granted, or failed with a ``FailKind``. A timer is always set
   while anyone waits, so nothing hangs; requests that only unverified bytes keep out wait for one
   ``Recheck``, then are refused; a victim not released is never evicted twice for the same request
   (``reconciliation.refuse_evicting_again``). Every operator unload is answered exactly once.
"""

from __future__ import annotations

import collections
import logging

from . import foreign, invariants, parking, reconciliation
from .actions import (
    Action,
    Fail,
    FailKind,
    Grant,
    Held,
    Load,
    Recheck,
    Released,
    Unload,
    UnloadAnswer,
    UnloadOutcome,
    UnloadReason,
    Wake,
)
from .policy import (
    BULK,
    ModelInfo,
    PolicyConfig,
    Resident,
    Snapshot,
    SwapPlan,
    Waiter,
    choose_victims,
    next_patience_deadline,
    plan_swap,
)
from .unverified import Unverified

# Re-exported: the actions are part of the Core's interface.
__all__ = ["Action", "Core", "Fail", "FailKind", "Grant", "Held", "InvariantBroken", "Load", "Recheck", "Released",
           "Unload", "UnloadAnswer", "UnloadOutcome", "UnloadReason", "Wake"]

log = logging.getLogger(__name__)
InvariantBroken = invariants.InvariantBroken


class Core:
    def __init__(self, device: str, budget_bytes: int, models: dict[str, ModelInfo], *,
                 config: PolicyConfig | None = None, max_queue: int = 256, reserve_bytes: int = 0) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.reserve_bytes = reserve_bytes  # kept free on the device, beside the budget (drivers, fragmentation)
        self.total_bytes: int | None = None  # the device's total by its meter; None until metered (the host: never)
        self.foreign_bytes = 0  # the device's used bytes beyond every charge, at the last quiet reading (foreign.py)
        self.oom_retry: str | None = None  # the model whose load ran out of memory once and is being retried
        self.models = models
        self.config = config or PolicyConfig()
        self.max_queue = max_queue
        self.resident: dict[str, Resident] = {}
        self.queues: dict[str, collections.deque[Waiter]] = {m: collections.deque() for m in models}
        self.loading: str | None = None
        self.loading_bytes = 0
        self.unloading: dict[str, int] = {}  # model -> charged bytes until its release is over
        self.unverified = Unverified()  # bytes releases left unverified: charged until the truth is known
        self.rechecking = False  # a Recheck is out: requests blocked by unverified bytes wait for it
        self.swap: SwapPlan | None = None
        # model -> why it is to be unloaded once drained: an operator asked, or over_budget
        self.pending_unloads: dict[str, UnloadReason] = {}
        self.tickets: dict[str, list[int]] = {}  # model -> operator unloads waiting for its answer
        self.epoch = 0  # counts the events that changed what is resident (see reconcile)
        self.changed: dict[str, int] = {}  # model -> the epoch its residency last changed
        self.swaps = 0  # committed swaps (loads started), for metrics and the benchmark
        self.evictions: collections.Counter[UnloadReason] = collections.Counter()

    # views ---------------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        return sum(r.charged_bytes for r in self.resident.values()) + self.loading_bytes + self._reserved()

    def _reserved(self) -> int:
        return sum(self.unloading.values()) + self.unverified.total() + parking.held(self.models.values())

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(now=now, budget_bytes=self.capacity(), models=self.models, resident=self.resident,
                        queues={m: list(q) for m, q in self.queues.items()},
                        reserved_bytes=self.loading_bytes + self._reserved(), config=self.config)

    def state_of(self, model: str) -> str:
        if model == self.loading:
            return "loading"
        if model in self.unloading:
            return "unloading"
        r = self.resident.get(model)
        if r is None:
            return "parked" if self.models[model].parked_bytes is not None else "unloaded"
        return "draining" if r.draining else "ready"

    def capacity(self) -> int:
        """What the ledger may charge: the budget, or the device's room beside memory not ours if smaller."""
        return foreign.capacity(self)

    def check_invariants(self) -> None:
        invariants.check(self)

    # events: requests ----------------------------------------------------------------------------

    def arrive(self, req_id: int, model: str, now: float, *, lane: str = BULK, timeout_s: float = 300.0) -> list[Action]:
        info = self.models[model]
        r = self.resident.get(model)
        if r is not None and not r.draining:
            r.in_flight += 1
            r.last_used = now
            return [Grant(req_id, model)]
        if info.footprint_bytes > self.budget_bytes:
            return [Fail(req_id, model, FailKind.TOO_LARGE,
                         f"{model} needs {info.footprint_bytes / 2**20:.0f} MiB but the {self.device} budget is "
                         f"{self.budget_bytes / 2**20:.0f} MiB")]
        q = self.queues[model]
        if len(q) >= self.max_queue:
            return [Fail(req_id, model, FailKind.QUEUE_FULL, f"{len(q)} requests already wait for {model}; try again shortly")]
        eta = 0.0 if model == self.loading else info.swap_in_s
        if eta > timeout_s:
            return [Fail(req_id, model, FailKind.NOT_READY_IN_TIME,
                         f"{model} takes about {info.load_s:.0f} s to load, longer than the request's {timeout_s:.0f} s deadline")]
        q.append(Waiter(req_id, model, lane, now, now + timeout_s))
        return self._step(now)

    def release(self, model: str, now: float) -> list[Action]:
        r = self.resident.get(model)
        if r is not None:
            r.in_flight = max(0, r.in_flight - 1)
            r.last_used = now
        return self._step(now)

    def tick(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for model, q in self.queues.items():
            keep = collections.deque()
            for w in q:
                if now >= w.deadline:
                    actions.append(Fail(w.req_id, model, FailKind.DEADLINE, f"{model} was not ready within the request's deadline"))
                else:
                    keep.append(w)
            self.queues[model] = keep
        return actions + self._step(now)

    def cancel(self, req_id: int, model: str, now: float) -> list[Action]:
        """The caller of a waiting request went away: forget it."""
        q = self.queues[model]
        self.queues[model] = collections.deque(w for w in q if w.req_id != req_id)
        return self._step(now)

    # events: the world's answers -----------------------------------------------------------------

    def load_done(self, model: str, now: float, *, ok: bool, peak_memory_bytes: int | None = None,
                  load_s: float | None = None, reason: str = "", out_of_memory: bool = False,
                  unparked: bool = False) -> list[Action]:
        """``model``'s load is over (``unparked``: an un-park, ``parking.loaded``). Failed with ``out_of_memory``:
        ``foreign.out_of_memory`` evicts and retries once, or refuses its waiters."""
        if model != self.loading:
            log.warning("%s: load_done for %s, which was not loading; ignored", self.device, model)
            return self._step(now)
        self.loading = None
        self.loading_bytes = 0
        self.swap = None
        self.mark_changed(model)
        info = self.models[model]
        parking.loaded(info, load_s if ok else None, unparked)
        actions: list[Action] = []
        if ok:
            self.oom_retry = None
            charged = peak_memory_bytes if peak_memory_bytes else info.footprint_bytes
            info.footprint_bytes = max(charged, 1)
            # An operator asked to unload it while it loaded: it is drained at once (its waiters stay queued).
            self.resident[model] = Resident(charged_bytes=charged, last_used=now, loaded_at=now,
                                            draining=model in self.pending_unloads)
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
                    self.pending_unloads.setdefault(victim, UnloadReason.OVER_BUDGET)
        elif out_of_memory:
            actions += foreign.out_of_memory(self, model, now)
        else:
            self.oom_retry = None
            for w in self.queues[model]:
                actions.append(Fail(w.req_id, model, FailKind.LOAD_FAILED, reason or f"{model} failed to load"))
            self.queues[model].clear()
        return actions + self._step(now)

    def unload_done(self, model: str, now: float, released: Released | None = None) -> list[Action]:
        """``model``'s unload is over: its charge leaves "unloading", and the operator unloads that
        waited for it are answered RELEASED. ``released`` says how (None: all of it came back, verified).

        What came back: the whole charge when the worker stopped, else the larger of the service's
        and the meter's figures. Less than the charge means the rest stayed with its worker (a
        process-wide cost such as a CUDA context or an imported framework, first charged to the first
        model loaded): it moves to a model of the same family still resident, so the ledger keeps
        telling the truth. Unverified, what leaves the ledger less what the meter saw back stays
        charged as unverified (the whole charge when the service did not unload it), and the ledger
        lets it go only when the truth is known again (``rechecked``, ``reconcile``, an operator)."""
        charged = self.unloading.pop(model, 0)
        self.mark_changed(model)
        if released is not None:
            if released.unloaded and released.verified:
                self.models[model].unload_s = released.seconds  # learnt, as load_done learns load_s
            if released.parked:  # what it still holds is charged as parked, not to another model
                parking.parked(self.models[model], released)
            shown = max(0, released.returned_bytes or 0)
            kept = charged
            if released.unloaded:
                back = charged if released.worker_stopped or released.parked else max(released.freed_bytes, shown)
                family = self.models[model].family
                heir = next((m for m in self.resident if family is not None and self.models[m].family == family), None)
                if heir is not None and back < charged:
                    self.resident[heir].charged_bytes += charged - back
                    kept = back
                kept = 0 if released.verified else max(0, kept - shown)
            if kept:
                reconciliation.keep_unverified(self, model, kept, released)
        return self._answer(model, UnloadOutcome.RELEASED) + self._step(now)

    def request_unload(self, ticket: int, model: str, now: float, *, drain: bool = True) -> list[Action]:
        """An operator asked to unload ``model``; ``UnloadAnswer(ticket, ...)`` says when it is done.

        Resident: drained (no new grants; the requests in flight finish), then unloaded as any
        victim is — its charge moves to "unloading" with the ``Unload`` and leaves the ledger at
        ``unload_done``, which answers RELEASED. With ``drain`` False and requests in flight it is
        refused at once (IN_USE) and nothing changes. Loading: drained as soon as it is loaded.
        Unloading already: answered by that release. Not resident: NOT_RESIDENT at once. Its waiting
        requests stay queued and bring it back later, by the normal scheduling."""
        state = self.state_of(model)
        if state in ("unloaded", "parked"):
            return [UnloadAnswer(ticket, model, UnloadOutcome.NOT_RESIDENT)]
        r = self.resident.get(model)
        if r is not None and r.in_flight > 0 and not drain:
            return [UnloadAnswer(ticket, model, UnloadOutcome.IN_USE)]
        self.tickets.setdefault(model, []).append(ticket)
        if state != "unloading":
            self.pending_unloads.setdefault(model, UnloadReason.REQUEST)
        if r is not None:
            r.draining = True
        return self._step(now)

    def vanished(self, model: str, now: float) -> list[Action]:
        """The service said ``model`` is not loaded, though the ledger had it: the ledger forgets it."""
        if self.resident.pop(model, None) is not None:
            self.mark_changed(model)
            self.unverified.rebaseline()
        return self._step(now)

    def reconcile(self, family: str, held: dict[str, Held] | None, now: float, *, since: int | None = None) -> list[Action]:
        """``family``'s service was read: ``held`` is what it says it holds (model -> ``Held``), or
        None when it could not be reached. ``since``: the ``epoch`` when the read began (None: the
        reply is current). What that means for the ledger: ``reconciliation.reconcile``."""
        return reconciliation.reconcile(self, family, held, now, since=since) + self._step(now)

    def rechecked(self, now: float, *, device_used_bytes: int | None = None, total_bytes: int | None = None) -> list[Action]:
        """The truth was read again for requests kept out: the services of the unverified bytes were
        reconciled, and ``device_used_bytes`` of ``total_bytes`` is the meter's reading (None: none).
        See ``reconciliation.rechecked``."""
        return reconciliation.rechecked(self, device_used_bytes, total_bytes) + self._step(now)

    def metered(self, now: float, device_used_bytes: int | None, total_bytes: int | None) -> list[Action]:
        """The device's meter was read (None: it could not be): ``foreign.metered``. The step then
        evicts idle models if the room left beside memory not ours no longer holds the ledger."""
        foreign.metered(self, device_used_bytes, total_bytes)
        return self._step(now)

    def forget_unverified(self, now: float, model: str | None = None) -> list[Action]:
        """An operator says the unverified bytes of ``model`` (None: all of them) are free: let them go."""
        reconciliation.forget_unverified(self, model)
        return self._step(now)

    # the step ------------------------------------------------------------------------------------

    def mark_changed(self, model: str) -> None:
        self.epoch += 1
        self.changed[model] = self.epoch

    def _answer(self, model: str, outcome: UnloadOutcome) -> list[Action]:
        return [UnloadAnswer(t, model, outcome) for t in self.tickets.pop(model, [])]

    def _step(self, now: float) -> list[Action]:
        actions: list[Action] = []
        foreign.evict_for_room(self, now)
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
        # 2. Memory not ours grew past the room the ledger holds: idle models go (foreign.py). Then
        # operator, foreign and over-budget unloads: once drained, whatever the swap state (they only free memory).
        for model, reason in list(self.pending_unloads.items()):
            r = self.resident.get(model)
            if r is None:
                if model == self.loading:
                    continue  # load_done drains it
                del self.pending_unloads[model]
                if model not in self.unloading:  # gone by other means (vanished, its load failed)
                    actions += self._answer(model, UnloadOutcome.NOT_RESIDENT)
            elif r.in_flight == 0 and model not in (self.swap.evict if self.swap else ()):
                del self.pending_unloads[model]
                self.resident.pop(model)
                self.unloading[model] = r.charged_bytes
                self.evictions[reason] += 1
                actions.append(Unload(model, reason, parking.choose(self, model, reason)))
        # 3. Start a swap when none is in flight (and something waits: the plan is for waiting work alone).
        if self.swap is None and self.loading is None and not self.unloading and any(self.queues.values()):
            plan = plan_swap(self.snapshot(now))
            # A victim not released for some waiters (answered its unload, kept the model) is not evicted twice for them.
            while plan is not None and (refused := reconciliation.refuse_evicting_again(self, plan)):
                actions += refused
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
                    self.evictions[UnloadReason.SWAP] += 1
                    actions.append(Unload(victim, UnloadReason.SWAP, parking.choose(self, victim, UnloadReason.SWAP)))
            victims_left = any(v in self.resident for v in self.swap.evict)
            if not victims_left and not self.unloading:
                model = self.swap.load
                info = self.models[model]
                if not self.queues[model]:
                    self.swap = None  # its waiters went away (deadline) meanwhile
                    self.oom_retry = None if self.oom_retry == model else self.oom_retry
                elif info.footprint_bytes <= self.capacity() - self.used_bytes():
                    self.loading = model
                    self.loading_bytes = info.footprint_bytes
                    self.swaps += 1
                    actions.append(Load(model))
                else:
                    self.swap = None  # numbers changed under us (a measurement, an unverified release); plan again
                    return actions + self._step(now)
        # 5. Requests that cannot fit beside the unverified or the foreign bytes: read the truth again,
        # once nothing loads or unloads (a reading then would prove nothing; the completion steps).
        if not self.rechecking and self.loading is None and not self.unloading and reconciliation.blocked(self):
            self.rechecking = True
            actions.append(Recheck(self.unverified.families(self.models)))
        # 6. A timer whenever anyone waits: deadlines, patience, idle grace.
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
