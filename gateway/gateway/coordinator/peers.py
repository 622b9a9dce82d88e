"""The peer the scheduler is measured against: llama-swap's router, replayed on the same virtual
clock, traces, batchers and worker costs as the real ``Core`` in ``sim.simulate_core``.

A transcription of llama-swap's ``internal/router/scheduler/fifo.go`` (its only scheduler; checked
against mostlygeek/llama-swap 0bdb372) and ``base.go``'s ``doSwap``:

- a request for a model that is ready, with nothing to evict and no swap in flight evicting it, is
  served at once, even while older requests for other models queue (the fast path);
- a request for a model whose swap is in flight joins that swap's waiters, so one swap serves every
  caller that asked for it ("A B C A B C -> A A B B C C");
- a request whose swap would evict a model with requests in flight, or collide with a swap in
  flight, queues; the queue (arrival order, higher priority first) is walked again on every swap's
  end and whenever a model's in-flight count drops to zero, each request re-running the same tree;
- a swap stops its victims in parallel, then starts the target.

Its swapper here evicts the least recently used running models until the target fits the budget
(an exclusive group's mates always), which on the one-at-a-time traces is llama-swap's swap group.
Its per-model concurrency limit (10 by default, a 429 past it) is left out, as if configured high
enough: rejected requests would otherwise leave its wait figures.
"""

from __future__ import annotations

import collections
import heapq
import itertools

from .sim import (
    Outcome,
    SimModel,
    SimResult,
    TraceRequest,
    WorkerCosts,
    Workers,
    _ModelServer,
)


def simulate_llama_swap(trace: list[TraceRequest], models: dict[str, SimModel], budget_bytes: int, *,
                        workers: dict[str, WorkerCosts] | None = None) -> SimResult:
    world = Workers(models, workers)
    seq = itertools.count()
    heap: list[tuple[float, int, str, tuple]] = []
    outcomes = {i: Outcome(i, r.model, r.lane, r.at) for i, r in enumerate(trace)}
    servers = {m: _ModelServer(m, s) for m, s in models.items()}
    running: dict[str, float] = {}  # every process not stopped (victims until their swap ends) -> last used
    active: dict[str, tuple[tuple[str, ...], list[int]]] = {}  # swap target -> (its victims, its waiters)
    in_flight: collections.Counter[str] = collections.Counter()
    queued: list[int] = []
    swaps = 0
    swap_s = 0.0
    max_used = 0

    def push(t: float, kind: str, *args) -> None:
        heapq.heappush(heap, (t, next(seq), kind, args))

    for i, r in enumerate(trace):
        push(r.at, "arrive", i)

    def eviction_for(target: str) -> tuple[str, ...]:
        pool = {m: t for m, t in running.items() if m != target}
        pool.update({m: float("inf") for m in active if m != target})  # committed, not yet running
        spec = models[target]
        evict = [m for m in pool if spec.group is not None and models[m].group == spec.group]
        used = sum(models[m].footprint_bytes for m in pool if m not in evict) + (0 if target in running else spec.footprint_bytes)
        for m in sorted((m for m in pool if m not in evict), key=pool.get):
            if used <= budget_bytes:
                break
            evict.append(m)
            used -= models[m].footprint_bytes
        return tuple(sorted(evict))

    def collides(target: str, evict: tuple[str, ...]) -> bool:
        return any(m != target and (m in evict or target in victims or set(evict) & set(victims))
                   for m, (victims, _) in active.items())

    def grant(i: int, model: str, now: float) -> None:
        outcomes[i].granted = now
        in_flight[model] += 1
        running[model] = now
        servers[model].pending.append(i)
        kick(model, now)

    def decide(i: int, now: float) -> bool:
        """The decision tree of ``OnRequest``/``drainQueue``; False: the request stays queued."""
        nonlocal swaps, swap_s
        model = trace[i].model
        if model in active:
            active[model][1].append(i)
            return True
        evict = eviction_for(model)
        if model in running and not evict and not collides(model, evict):
            grant(i, model, now)
            return True
        if collides(model, evict) or any(in_flight[m] for m in evict):
            return False
        active[model] = (evict, [i])
        stop_s = max((world.unload_s(m) for m in evict), default=0.0)
        for m in evict:
            world.gone(m)
        load_s = 0.0 if model in running else world.load_s(model, now + stop_s)
        swaps += model not in running
        swap_s += stop_s + load_s
        push(now + stop_s + load_s, "swap_done", model)
        return True

    def drain(now: float) -> None:
        queued[:] = [i for i in queued if not decide(i, now)]

    def enqueue(i: int) -> None:
        p = models[trace[i].model].priority
        at = next((k for k, j in enumerate(queued) if models[trace[j].model].priority < p), len(queued))
        queued.insert(at, i)

    def kick(model: str, now: float) -> None:
        srv = servers[model]
        if srv.busy_until is not None or not srv.pending:
            return
        batch = [srv.pending.popleft() for _ in range(min(len(srv.pending), srv.spec.max_batch))]
        srv.busy_until = now + srv.spec.batch_s
        push(srv.busy_until, "batch_done", model, tuple(batch))

    while heap:
        now, _, kind, args = heapq.heappop(heap)
        if kind == "arrive":
            (i,) = args
            if not decide(i, now):
                enqueue(i)
        elif kind == "swap_done":
            (model,) = args
            victims, waiters = active.pop(model)
            for m in victims:
                running.pop(m, None)
            running[model] = now
            max_used = max(max_used, sum(models[m].footprint_bytes for m in running))
            for i in waiters:
                grant(i, model, now)
            drain(now)
        elif kind == "batch_done":
            model, batch = args
            servers[model].busy_until = None
            for i in batch:
                outcomes[i].done = now
                in_flight[model] -= 1
                if in_flight[model] == 0:
                    drain(now)
            kick(model, now)
    return SimResult("llama-swap", [outcomes[i] for i in sorted(outcomes)], swaps, max_used, 0, swap_s=swap_s)
