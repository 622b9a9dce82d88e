"""Pure policy: which model to swap in next, and which residents to evict for it.

Nothing here logs, sleeps, or touches the world. Both functions read a snapshot and return a
decision, so they are tested directly and replayed under a virtual clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INTERACTIVE = "interactive"
BULK = "bulk"
LANES = (INTERACTIVE, BULK)


@dataclass
class ModelInfo:
    id: str
    footprint_bytes: int  # measured peak once known, else the catalog's estimate
    pin: bool = False
    priority: int = 0
    group: str | None = None
    load_s: float = 2.0  # expected; learnt from real loads
    unload_s: float = 0.5
    family: str | None = None  # its service: reconciliation reads one family at a time
    # The parked tier (``parking``): whether its service parks it when evicted, its learnt un-park time, and while
    # it is parked the device memory it still holds (None: not parked) and its weights' host memory.
    parkable: bool = False
    unpark_s: float | None = None
    parked_bytes: int | None = None
    parked_host_bytes: int | None = None

    @property
    def swap_in_s(self) -> float:
        """What bringing it in costs: an un-park while it is parked (once measured), else a load."""
        return self.unpark_s if self.parked_bytes is not None and self.unpark_s is not None else self.load_s


@dataclass
class Resident:
    charged_bytes: int
    in_flight: int = 0
    last_used: float = 0.0
    loaded_at: float = 0.0
    draining: bool = False


@dataclass
class Waiter:
    req_id: int
    model: str
    lane: str
    arrived: float
    deadline: float
    # Victims evicted for it whose release was not verified: it never waits for the same eviction twice.
    not_released: set[str] = field(default_factory=set)


@dataclass
class PolicyConfig:
    max_wait_s: float = 30.0
    """No request waits longer than this plus one swap (the starvation bound)."""
    interactive_patience_s: float = 0.0
    """How long an interactive request lets a busy resident model keep the device."""
    bulk_patience_s: float = 10.0
    """How long bulk work for a non-resident model waits while a busy model keeps the device."""
    idle_grace_s: float = 0.5
    """A resident model used within this many seconds counts as busy (its next request is likely near)."""
    swap_batch: int = 16
    """This many waiting requests justify a swap even before their patience runs out."""
    park_host_bytes: int | None = None
    """Most host memory the models the coordinator parks may take in all; None: the services' caps decide."""


@dataclass(frozen=True)
class SwapPlan:
    load: str
    evict: tuple[str, ...] = ()
    wait_for_drain: bool = False


@dataclass
class Snapshot:
    now: float
    budget_bytes: int
    models: dict[str, ModelInfo]
    resident: dict[str, Resident]
    queues: dict[str, list[Waiter]]
    reserved_bytes: int = 0  # a load in flight, or bytes whose release is not yet verified
    config: PolicyConfig = field(default_factory=PolicyConfig)

    def used_bytes(self) -> int:
        return sum(r.charged_bytes for r in self.resident.values()) + self.reserved_bytes

    def free_bytes(self) -> int:
        return self.budget_bytes - self.used_bytes()


def urgency(snap: Snapshot, model: str) -> tuple:
    """Sort key of a model with waiting requests: interactive before bulk, then the oldest wait,
    then the most work waiting."""
    q = snap.queues[model]
    has_interactive = any(w.lane == INTERACTIVE for w in q)
    oldest = min(w.arrived for w in q)
    return (0 if has_interactive else 1, oldest, -len(q))


def _busy(snap: Snapshot, model: str) -> bool:
    r = snap.resident[model]
    return r.in_flight > 0 or bool(snap.queues.get(model)) or snap.now - r.last_used < snap.config.idle_grace_s


def choose_victims(snap: Snapshot, need_bytes: int, incoming: str, *, allow_busy: bool) -> tuple[str, ...] | None:
    """The residents to evict so that ``need_bytes`` more fit, or None when no set does.

    Never a pinned model, never the incoming one. Idle before busy (when busy ones are allowed),
    then lower priority, then least recently used. A resident of the incoming model's exclusive
    group is always evicted."""
    incoming_group = snap.models[incoming].group
    forced = [m for m in snap.resident if incoming_group is not None and snap.models[m].group == incoming_group and m != incoming]
    if any(snap.models[m].pin for m in forced):
        return None
    candidates = [m for m in snap.resident if m != incoming and m not in forced and not snap.models[m].pin]
    if not allow_busy:
        candidates = [m for m in candidates if not _busy(snap, m)]
    candidates.sort(key=lambda m: (_busy(snap, m), snap.models[m].priority, snap.resident[m].last_used))
    chosen = list(forced)
    freed = sum(snap.resident[m].charged_bytes for m in chosen)
    for m in candidates:
        if freed >= need_bytes:
            break
        chosen.append(m)
        freed += snap.resident[m].charged_bytes
    if freed < need_bytes:
        return None
    return tuple(chosen)


def _patience(snap: Snapshot, model: str, lane_patience: float, n_waiting_models: int) -> float:
    """How long waiting work for ``model`` lets busy residents keep the device. Capped so that even
    when every waiting model needs its own swap first, no request waits past ``max_wait_s`` plus
    one swap: each swap ahead of it is paid out of its patience."""
    swap_cost = snap.models[model].swap_in_s + max((snap.models[m].unload_s for m in snap.resident), default=0.0)
    return min(lane_patience, max(0.0, snap.config.max_wait_s - swap_cost * max(1, n_waiting_models)))


def plan_swap(snap: Snapshot) -> SwapPlan | None:
    """The next swap to start, or None to keep the device as it is for now.

    Called only when no load or unload is in flight. A model that fits in free memory loads at
    once; otherwise idle residents are evicted at once; busy residents only once the waiting work
    has been patient long enough (or is large enough to be worth a swap), so interleaved traffic
    does not swap on every request. The patience is capped so that no request waits past
    ``max_wait_s`` plus one swap."""
    cfg = snap.config
    waiting = sorted((m for m, q in snap.queues.items() if q and m not in snap.resident), key=lambda m: urgency(snap, m))
    most_urgent: SwapPlan | None = None  # the first waiting model that busy residents could make room for
    for model in waiting:
        info = snap.models[model]
        if info.footprint_bytes > snap.budget_bytes:
            continue  # can never fit; the core rejects its requests
        group_clash = info.group is not None and any(snap.models[m].group == info.group for m in snap.resident)
        need = info.footprint_bytes - snap.free_bytes()
        if need <= 0 and not group_clash:
            return SwapPlan(load=model)
        idle = choose_victims(snap, max(need, 0), model, allow_busy=False)
        if idle is not None:
            return SwapPlan(load=model, evict=idle)
        busy = choose_victims(snap, max(need, 0), model, allow_busy=True)
        if busy is None:
            continue
        most_urgent = most_urgent or SwapPlan(load=model, evict=busy, wait_for_drain=True)
        q = snap.queues[model]
        oldest_wait = snap.now - min(w.arrived for w in q)
        lane_patience = cfg.interactive_patience_s if any(w.lane == INTERACTIVE for w in q) else cfg.bulk_patience_s
        if oldest_wait >= _patience(snap, model, lane_patience, len(waiting)) or len(q) >= cfg.swap_batch:
            # Its work says the busy residents have kept the device long enough; the device goes
            # to the most urgent work, so a big queue never overtakes an older one.
            return most_urgent
    return None


def next_patience_deadline(snap: Snapshot) -> float | None:
    """When ``plan_swap`` could change its mind with no new event: the earliest moment a waiting
    model's patience runs out, or a busy resident's idle grace ends."""
    cfg = snap.config
    times = []
    for model, q in snap.queues.items():
        if not q or model in snap.resident:
            continue
        lane_patience = cfg.interactive_patience_s if any(w.lane == INTERACTIVE for w in q) else cfg.bulk_patience_s
        patience = _patience(snap, model, lane_patience, sum(1 for m, q2 in snap.queues.items() if q2 and m not in snap.resident))
        times.append(min(w.arrived for w in q) + patience)
    for r in snap.resident.values():
        if r.in_flight == 0:
            times.append(r.last_used + cfg.idle_grace_s)
    future = [t for t in times if t > snap.now]
    return min(future) if future else None
