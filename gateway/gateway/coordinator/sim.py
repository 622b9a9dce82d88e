"""Replaying request traces through the real ``Core`` under a virtual clock, and through two peer
policies for comparison, with modelled load, unload and inference times.

Used by the tests (the invariants on recorded and random traces) and by ``bench/scheduler.py``.
Nothing here sleeps: time is a number that jumps from event to event. A swap costs each model's
fixed ``load_s``/``unload_s``, or, for a model whose family has ``WorkerCosts``, what its family's
worker process makes it cost (cold start, live worker, warm spare), the same for every policy.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .core import Core, Fail, Grant, Load, Recheck, Released, Unload, UnloadAnswer, UnloadOutcome, Wake
from .policy import BULK, INTERACTIVE, ModelInfo, PolicyConfig


@dataclass(frozen=True)
class TraceRequest:
    at: float
    model: str
    lane: str = BULK
    timeout_s: float = 300.0


@dataclass(frozen=True)
class TraceUnload:
    """An operator's unload (``POST /admin/models/{id}/unload``) at time ``at``."""

    at: float
    model: str
    drain: bool = True


@dataclass
class SimModel:
    footprint_bytes: int
    load_s: float = 2.0
    unload_s: float = 0.5
    batch_s: float = 0.05  # one forward pass, whatever its size up to max_batch
    max_batch: int = 8
    pin: bool = False
    priority: int = 0
    group: str | None = None
    fail_load: bool = False
    zombie_s: float | None = None  # its releases go unverified: the memory shows back this long after (None: at once)
    family: str | None = None  # its service; with ``WorkerCosts`` for it, those replace load_s and unload_s
    unpark_s: float | None = None  # its service parks it (``parking``): evicted, it parks in unload_s, un-parks in this


@dataclass(frozen=True)
class WorkerCosts:
    """What a family service's worker process makes its swaps cost (measured: bench/README.md)."""

    cold_load_s: float  # a load that starts the worker: the process, its imports (on a GPU its context), the weights
    live_load_s: float  # a load into a live worker of the family, or into a warm spare
    stop_s: float  # the unload of the family's last resident model: its worker ends
    live_unload_s: float = 0.05  # an unload that leaves the worker running
    spare: bool = False  # a warm spare: started when a worker starts, ready cold_load_s - live_load_s later


class Workers:
    """The world's worker processes as swaps see them: which models each family's worker holds, and
    when its warm spare is ready. ``load_s``/``unload_s`` price a load or unload starting now and
    record it; ``gone`` says a model left (its unload or failed load ended)."""

    def __init__(self, models: dict[str, SimModel], costs: dict[str, WorkerCosts] | None) -> None:
        self.models = models
        self.costs = costs or {}
        self.held: set[str] = set()  # loading or loaded, in the world
        self.spare_ready: dict[str, float] = {f: 0.0 for f in self.costs}  # the service started with one

    def _family(self, model: str) -> tuple[str | None, WorkerCosts | None]:
        fam = self.models[model].family
        return fam, self.costs.get(fam) if fam is not None else None

    def _live(self, model: str, fam: str) -> bool:
        return any(self.models[m].family == fam for m in self.held if m != model)

    def load_s(self, model: str, now: float) -> float:
        fam, c = self._family(model)
        live = fam is not None and self._live(model, fam)
        self.held.add(model)
        if c is None:
            return self.models[model].load_s
        if live:
            return c.live_load_s
        if not c.spare:
            return c.cold_load_s
        handoff = max(now, self.spare_ready[fam])  # a spare still importing is waited for
        self.spare_ready[fam] = handoff + c.cold_load_s - c.live_load_s  # the next spare starts
        return handoff - now + c.live_load_s

    def unload_s(self, model: str) -> float:
        fam, c = self._family(model)
        if c is None:
            return self.models[model].unload_s
        return c.live_unload_s if self._live(model, fam) else c.stop_s

    def gone(self, model: str) -> None:
        self.held.discard(model)


@dataclass
class Outcome:
    req_id: int
    model: str
    lane: str
    arrived: float
    granted: float | None = None
    done: float | None = None
    failed: str | None = None

    @property
    def wait_s(self) -> float | None:
        return None if self.granted is None else self.granted - self.arrived


@dataclass
class SimResult:
    policy: str
    outcomes: list[Outcome]
    swaps: int
    max_used_bytes: int
    events: int
    double_loads: int = 0
    unload_answers: dict[int, list[UnloadOutcome]] = field(default_factory=dict)  # ticket -> every answer it got
    swap_s: float = 0.0  # the device's time spent loading and unloading

    def waits(self, lane: str | None = None) -> list[float]:
        return [o.wait_s for o in self.outcomes if o.wait_s is not None and (lane is None or o.lane == lane)]

    def pct(self, p: float, lane: str | None = None) -> float:
        w = sorted(self.waits(lane))
        if not w:
            return 0.0
        return w[min(len(w) - 1, int(round(p / 100 * (len(w) - 1))))]

    @property
    def swaps_per_100(self) -> float:
        return 100.0 * self.swaps / max(1, len(self.outcomes))

    def summary(self) -> dict:
        return {"policy": self.policy, "requests": len(self.outcomes), "swaps": self.swaps,
                "swaps_per_100": self.swaps_per_100, "p50": self.pct(50), "p99": self.pct(99),
                "max": max(self.waits(), default=0.0), "failed": sum(1 for o in self.outcomes if o.failed),
                "interactive_p95": self.pct(95, INTERACTIVE), "mean": statistics.fmean(self.waits()) if self.waits() else 0.0}


class _ModelServer:
    """A family service's batcher for one model: one batch at a time, up to max_batch."""

    def __init__(self, model: str, spec: SimModel) -> None:
        self.model = model
        self.spec = spec
        self.pending: collections.deque[int] = collections.deque()
        self.busy_until: float | None = None


def simulate_core(trace: list[TraceRequest], models: dict[str, SimModel], budget_bytes: int,
                  config: PolicyConfig | None = None, *, check: bool = True, max_queue: int = 10_000,
                  unloads: Sequence[TraceUnload] = (), workers: dict[str, WorkerCosts] | None = None) -> SimResult:
    """Run ``trace`` (and the operator ``unloads``, ticket = their index) through the real Core.
    ``check`` verifies the invariants after every event. The device's meter reads the ledger's
    charges plus the memory of the zombies (``SimModel.zombie_s``) still held; a ``Recheck`` is
    answered with that reading 50 ms later. Every load and verified unload reports its time, so the
    Core learns them as in production."""
    infos = {m: ModelInfo(m, s.footprint_bytes, pin=s.pin, priority=s.priority, group=s.group,
                          load_s=s.load_s, unload_s=s.unload_s, family=s.family, parkable=s.unpark_s is not None)
             for m, s in models.items()}
    parked: set[str] = set()  # models parked in their worker, which lives on for them
    world = Workers(models, workers)
    core = Core("sim", budget_bytes, infos, config=config or PolicyConfig(), max_queue=max_queue)
    seq = itertools.count()
    heap: list[tuple[float, int, str, tuple]] = []
    outcomes: dict[int, Outcome] = {}
    servers = {m: _ModelServer(m, s) for m, s in models.items()}
    loads_in_flight: set[str] = set()
    double_loads = 0
    max_used = 0
    events = 0
    zombies: list[tuple[float, int]] = []  # (until, bytes) of releases that went unverified

    def device_used(now: float) -> int:
        return core.used_bytes() - core.unverified.total() + sum(b for until, b in zombies if until > now)

    def push(t: float, kind: str, *args) -> None:
        heapq.heappush(heap, (t, next(seq), kind, args))

    for i, r in enumerate(trace):
        push(r.at, "arrive", i, r)
    answers: dict[int, list[UnloadOutcome]] = {}
    for ticket, u in enumerate(unloads):
        push(u.at, "request_unload", ticket, u)

    swap_s = 0.0

    def apply(actions, now: float) -> None:
        nonlocal double_loads, swap_s
        for a in actions:
            if isinstance(a, Grant):
                o = outcomes[a.req_id]
                o.granted = now
                servers[a.model].pending.append(a.req_id)
                kick(a.model, now)
            elif isinstance(a, Fail):
                outcomes[a.req_id].failed = a.kind
                outcomes[a.req_id].done = now
            elif isinstance(a, Load):
                if a.model in loads_in_flight or a.model in core.resident:
                    double_loads += 1
                loads_in_flight.add(a.model)
                unparked = a.model in parked
                load_s = models[a.model].unpark_s if unparked else world.load_s(a.model, now)
                swap_s += load_s
                push(now + load_s, "load_done", a.model, load_s, unparked)
            elif isinstance(a, Unload):
                unload_s = models[a.model].unload_s if a.park else world.unload_s(a.model)
                swap_s += unload_s
                push(now + unload_s, "unload_done", a.model, unload_s, a.park)
            elif isinstance(a, UnloadAnswer):
                answers.setdefault(a.ticket, []).append(a.outcome)
            elif isinstance(a, Wake):
                push(a.at, "tick")
            elif isinstance(a, Recheck):
                push(now + 0.05, "rechecked")

    def kick(model: str, now: float) -> None:
        srv = servers[model]
        if srv.busy_until is not None or not srv.pending:
            return
        batch = [srv.pending.popleft() for _ in range(min(len(srv.pending), srv.spec.max_batch))]
        srv.busy_until = now + srv.spec.batch_s
        push(srv.busy_until, "batch_done", model, tuple(batch))

    while heap:
        now, _, kind, args = heapq.heappop(heap)
        events += 1
        if events > 2_000_000:
            raise RuntimeError("simulation did not settle (livelock?)")
        if kind == "arrive":
            i, r = args
            outcomes[i] = Outcome(i, r.model, r.lane, now)
            apply(core.arrive(i, r.model, now, lane=r.lane, timeout_s=r.timeout_s), now)
        elif kind == "batch_done":
            model, batch = args
            servers[model].busy_until = None
            for req_id in batch:
                outcomes[req_id].done = now
                apply(core.release(model, now), now)
            kick(model, now)
        elif kind == "load_done":
            model, load_s, unparked = args
            loads_in_flight.discard(model)
            parked.discard(model)
            spec = models[model]
            if spec.fail_load:
                world.gone(model)
            apply(core.load_done(model, now, ok=not spec.fail_load, peak_memory_bytes=spec.footprint_bytes,
                                 load_s=load_s, reason="simulated load failure", unparked=unparked), now)
        elif kind == "unload_done":
            model, unload_s, park = args
            zombie_s = models[model].zombie_s
            if park:  # its worker lives on, holding it in host memory
                parked.add(model)
                apply(core.unload_done(model, now, Released(core.unloading.get(model, 0), True, unload_s, "simulated park",
                                                            parked=True)), now)
            elif zombie_s is None:
                world.gone(model)
                charged = core.unloading.get(model, 0)
                apply(core.unload_done(model, now, Released(charged, True, unload_s, "simulated", worker_stopped=True)), now)
            else:
                world.gone(model)
                charged, used = core.unloading.get(model, 0), device_used(now)
                zombies.append((now + zombie_s, charged))
                apply(core.unload_done(model, now, Released(charged, False, 0.0, "a zombie worker", worker_stopped=True,
                                                            returned_bytes=0, device_used_bytes=used)), now)
        elif kind == "rechecked":
            apply(core.rechecked(now, device_used_bytes=device_used(now)), now)
        elif kind == "tick":
            apply(core.tick(now), now)
        elif kind == "request_unload":
            ticket, u = args
            apply(core.request_unload(ticket, u.model, now, drain=u.drain), now)
        if check:
            core.check_invariants()
        max_used = max(max_used, core.used_bytes())
    return SimResult("roundhouse", [outcomes[i] for i in sorted(outcomes)], core.swaps, max_used, events, double_loads,
                     answers, swap_s)


def simulate_fifo(trace: list[TraceRequest], models: dict[str, SimModel], budget_bytes: int, *,
                  group_same_model: bool = False, workers: dict[str, WorkerCosts] | None = None) -> SimResult:
    """FIFO that swaps on every model change: requests in arrival order, one at a time; a request
    for a model that is not loaded waits for in-flight work to finish, evicts least recently used
    models until it fits, and loads. ``group_same_model``: llama-swap's router instead, which
    serves a loaded model's requests at once and lets one swap serve every request queued for its
    model (``peers.simulate_llama_swap``)."""
    if group_same_model:
        from .peers import simulate_llama_swap  # it builds on this module

        return simulate_llama_swap(trace, models, budget_bytes, workers=workers)
    world = Workers(models, workers)
    queue: collections.deque[tuple[int, TraceRequest]] = collections.deque()
    resident: dict[str, float] = {}  # model -> last used
    outcomes = {i: Outcome(i, r.model, r.lane, r.at) for i, r in enumerate(trace)}
    arrivals = collections.deque(enumerate(trace))
    now = 0.0
    swaps = 0
    max_used = 0
    in_flight_until = 0.0  # all dispatched work is done by then
    server_free: dict[str, float] = {m: 0.0 for m in models}
    swap_s = 0.0

    while arrivals or queue:
        if not queue:
            i, r = arrivals.popleft()
            now = max(now, r.at)
            queue.append((i, r))
        i, r = queue.popleft()
        while arrivals and arrivals[0][1].at <= now:  # take in every arrival up to now
            queue.append(arrivals.popleft())
        if r.model not in resident:
            now = max(now, in_flight_until)  # drain in-flight work before swapping
            spec = models[r.model]
            while sum(models[m].footprint_bytes for m in resident) + spec.footprint_bytes > budget_bytes and resident:
                victim = min(resident, key=resident.get)
                del resident[victim]
                unload_s = world.unload_s(victim)
                swap_s += unload_s
                now += unload_s
                world.gone(victim)
            load_s = world.load_s(r.model, now)
            swap_s += load_s
            now += load_s
            swaps += 1
        max_used = max(max_used, sum(models[m].footprint_bytes for m in resident) + models[r.model].footprint_bytes)
        spec = models[r.model]  # its batcher: the request joins the next batch
        start = max(now, server_free[r.model])
        outcomes[i].granted = now
        outcomes[i].done = start + spec.batch_s
        server_free[r.model] = start + spec.batch_s
        resident[r.model] = now
        in_flight_until = max(in_flight_until, server_free[r.model])
    return SimResult("fifo", [outcomes[i] for i in sorted(outcomes)], swaps, max_used, 0, swap_s=swap_s)


# Traces -------------------------------------------------------------------------------------------


def interleaved(n: int = 400, gap_s: float = 0.25, pattern: str = "ABAACABCABAD") -> list[TraceRequest]:
    return [TraceRequest(i * gap_s, pattern[i % len(pattern)]) for i in range(n)]


def zipf_poisson(n: int = 600, rate: float = 4.0, models: str = "ABCD", s: float = 1.1, seed: int = 7) -> list[TraceRequest]:
    import random

    rng = random.Random(seed)
    weights = [1 / (k + 1) ** s for k in range(len(models))]
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(TraceRequest(t, rng.choices(models, weights)[0]))
    return out


def bursts(n_bursts: int = 30, size: int = 20, every_s: float = 4.0, models: str = "ABCD", seed: int = 3) -> list[TraceRequest]:
    import random

    rng = random.Random(seed)
    out = []
    for b in range(n_bursts):
        m = rng.choice(models)
        out.extend(TraceRequest(b * every_s + k * 0.01, m) for k in range(size))
    return out


def interactive_in_bulk(duration_s: float = 120.0, bulk_rate: float = 8.0, interactive_every_s: float = 6.0,
                        seed: int = 5) -> list[TraceRequest]:
    import random

    rng = random.Random(seed)
    out = [TraceRequest(i / bulk_rate, "A", BULK) for i in range(int(duration_s * bulk_rate))]
    t = 1.0
    while t < duration_s:
        out.append(TraceRequest(t, rng.choice("BCD"), INTERACTIVE, timeout_s=60.0))
        t += interactive_every_s
    out.sort(key=lambda r: r.at)
    return out


def one_at_a_time(models: str = "ABCD", gib: int = 6) -> tuple[dict[str, SimModel], int]:
    """Four models of 6 GiB on a 10 GiB budget: one fits at a time."""
    return {m: SimModel(gib * 2**30) for m in models}, 10 * 2**30
