"""Memory not ours on a metered device, the physical room, and a load that runs out of device memory,
in the Core (``foreign.py``), under a virtual clock; invariants checked after every event."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.coordinator.core import Core, Fail, FailKind, Grant, Held, Load, Recheck, Unload, UnloadReason, Wake
from gateway.coordinator.policy import ModelInfo, PolicyConfig

pytestmark = pytest.mark.unit

GiB = 2**30
TOTAL = 12 * GiB


def core(budget: int = 10 * GiB, reserve: int = 0, **models: int) -> Core:
    c = Core("cuda:0", budget, {m: ModelInfo(m, b, family="caption") for m, b in models.items()},
             config=PolicyConfig(idle_grace_s=0.5), reserve_bytes=reserve)
    c.metered(0.0, 0, TOTAL)
    return c


def resident(c: Core, model: str, now: float, req_id: int) -> None:
    """``model`` loaded at its footprint, its one request released: idle after the grace."""
    c.arrive(req_id, model, now)
    assert Grant(req_id, model) in c.load_done(model, now + 1, ok=True, peak_memory_bytes=c.models[model].footprint_bytes)
    c.release(model, now + 1)
    c.check_invariants()


def of(kind: type, actions: list) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_a_quiet_reading_charges_what_the_ledger_does_not_as_foreign_and_admission_respects_the_room() -> None:
    c = core(A=3 * GiB, B=4 * GiB)
    resident(c, "A", 0, 1)
    c.metered(5, 3 * GiB + 6 * GiB, TOTAL)  # our 3 GiB and 6 GiB of someone else's
    assert c.foreign_bytes == 6 * GiB and c.capacity() == 6 * GiB  # 12 - 6, under the 10 GiB budget
    acts = c.arrive(2, "B", 6)  # 3 + 4 > 6: A must go first, though the budget alone would hold both
    assert not of(Load, acts) and Unload("A", UnloadReason.SWAP) in acts
    assert Load("B") in c.unload_done("A", 7)  # loaded once A's release was over
    c.check_invariants()


def test_a_reading_during_a_load_or_an_unload_changes_nothing() -> None:
    c = core(A=3 * GiB)
    c.arrive(1, "A", 0)
    c.metered(0.5, 11 * GiB, TOTAL)  # the device is between states: proves nothing
    assert c.foreign_bytes == 0
    c.load_done("A", 1, ok=True, peak_memory_bytes=3 * GiB)
    c.metered(2, 5 * GiB, TOTAL)
    assert c.foreign_bytes == 2 * GiB


def test_unverified_bytes_are_never_foreign_too() -> None:
    from gateway.coordinator.core import Released

    c = core(A=3 * GiB)
    resident(c, "A", 0, 1)
    c.request_unload(9, "A", 3)
    c.unload_done("A", 4, Released(0, False, 1.0, "NVML showed nothing back", worker_stopped=True, returned_bytes=0))
    assert c.unverified.total() == 3 * GiB
    c.metered(5, 3 * GiB + 1 * GiB, TOTAL)  # the zombie's 3 GiB and 1 GiB of someone else's
    assert c.foreign_bytes == 1 * GiB and c.used_bytes() == 3 * GiB


@pytest.mark.parametrize("family, held", [("llm", Held(None)),  # a tenant whose server gives no figure (llama-swap)
                                          ("llm", Held(3 * GiB)),  # a tenant with its own figure (Ollama's size_vram)
                                          ("caption", Held(3 * GiB))])  # one of our own models
def test_a_reading_before_the_first_reconciliation_never_charges_a_resident_model_twice(family: str, held: Held) -> None:
    """At start the meter can be read before reconciliation: a model already resident at its server (a
    tenant, or our own model the last gateway loaded) is not in the ledger yet, so its bytes read as memory
    not ours. Once reconciliation charges it, they leave the foreign bytes: the room does not shrink twice,
    and no idle model is evicted for the correction."""
    c = Core("cuda:0", 5 * GiB, {"M": ModelInfo("M", 3 * GiB, family=family), "N": ModelInfo("N", 1 * GiB, family="face")},
             config=PolicyConfig(idle_grace_s=0.5))
    total = 6 * GiB
    c.metered(0, 3 * GiB + 1 * GiB, total)  # M's 3 GiB and 1 GiB someone else's; the ledger knows neither
    assert c.foreign_bytes == 4 * GiB and c.capacity() == 2 * GiB
    acts = c.reconcile(family, {"M": held}, 1)
    assert c.state_of("M") == "ready" and c.used_bytes() == 3 * GiB
    assert c.foreign_bytes == 1 * GiB and c.capacity() == 5 * GiB  # min(budget 5, 6 - 1)
    assert not of(Unload, acts)
    acts = c.metered(3, 3 * GiB + 1 * GiB, total)  # the next quiet reading agrees
    assert c.foreign_bytes == 1 * GiB and not of(Unload, acts)
    acts = c.arrive(1, "N", 5)  # 3 + 1 fit the 5 GiB of room: M is not evicted for N
    assert Load("N") in acts and not of(Unload, acts) and c.state_of("M") == "ready"
    c.check_invariants()


def test_a_reading_before_the_first_reconciliation_then_a_charge_then_no_reading_evicts_nothing() -> None:
    """The same correction with no reading after it: nothing is evicted on the stale foreign figure, even
    once the reconciled model is idle (the step compares the ledger with the room at every event)."""
    c = core(budget=5 * GiB, A=3 * GiB, B=1 * GiB)
    c.metered(0, 4 * GiB, 6 * GiB)
    c.reconcile("caption", {"A": Held(3 * GiB)}, 1)
    acts = c.tick(10) + c.tick(20)
    assert not of(Unload, acts) and c.state_of("A") == "ready" and c.capacity() == 5 * GiB
    c.check_invariants()


def test_foreign_growth_evicts_idle_models_lowest_priority_then_least_recently_used() -> None:
    c = core(A=3 * GiB, B=3 * GiB, C=3 * GiB)
    c.models["C"].priority = 1
    for i, m in enumerate("ACB"):
        resident(c, m, i * 10, i + 1)
    acts = c.metered(60, 9 * GiB + 5 * GiB, TOTAL)  # 5 GiB not ours: room 7 for our 9
    assert of(Unload, acts) == [Unload("A", UnloadReason.FOREIGN)]  # enough: C outranks, B was used later
    c.unload_done("A", 61)
    assert c.used_bytes() == 6 * GiB <= c.capacity() and set(c.resident) == {"B", "C"}
    c.check_invariants()


def test_foreign_growth_never_evicts_a_busy_or_pinned_model_and_takes_the_busy_one_once_idle() -> None:
    c = core(A=4 * GiB, P=4 * GiB)
    c.models["P"].pin = True
    resident(c, "P", 0, 1)
    resident(c, "A", 0, 2)
    c.arrive(3, "A", 10)  # A busy
    assert of(Unload, c.metered(11, 8 * GiB + 6 * GiB, TOTAL)) == []  # room 6 for our 8, but nothing can go yet
    c.release("A", 12)
    assert of(Unload, c.metered(14, 8 * GiB + 6 * GiB, TOTAL)) == [Unload("A", UnloadReason.FOREIGN)]


def test_a_request_kept_out_only_by_foreign_memory_waits_for_one_reading_then_is_refused_transiently() -> None:
    c = core(A=3 * GiB, B=8 * GiB)
    c.metered(1, 6 * GiB, TOTAL)  # room 6: B (8) fits the budget, not the room
    acts = c.arrive(1, "B", 2)
    assert of(Recheck, acts) and not of(Fail, acts) and of(Wake, acts)  # queued, a timer armed
    fails = of(Fail, c.rechecked(3, device_used_bytes=6 * GiB, total_bytes=TOTAL))
    assert [(f.req_id, f.kind) for f in fails] == [(1, FailKind.FOREIGN_MEMORY)]
    assert "6144 MiB held by processes not ours" in fails[0].message
    acts = c.arrive(2, "B", 4)  # the foreign memory went away meanwhile: the next reading lets it in
    assert of(Recheck, acts)
    assert Load("B") in c.rechecked(5, device_used_bytes=1 * GiB, total_bytes=TOTAL)
    c.check_invariants()


def test_the_reserve_is_kept_free_beside_the_foreign_bytes() -> None:
    c = core(budget=12 * GiB, reserve=1 * GiB, A=8 * GiB)
    c.metered(1, 3 * GiB, TOTAL)
    assert c.capacity() == 8 * GiB
    assert Load("A") in c.arrive(1, "A", 2)


def test_a_model_larger_than_the_budget_is_still_refused_at_once_as_too_large() -> None:
    c = core(budget=4 * GiB, A=5 * GiB)
    assert of(Fail, c.arrive(1, "A", 0))[0].kind is FailKind.TOO_LARGE


def test_a_load_out_of_memory_evicts_idle_models_and_is_retried_once_then_serves() -> None:
    c = core(A=2 * GiB, B=2 * GiB, C=4 * GiB)
    resident(c, "A", 0, 1)
    resident(c, "B", 2, 2)
    acts = c.arrive(3, "C", 10)
    assert Load("C") in acts  # 8 of 10 GiB: fits by the ledger
    acts = c.load_done("C", 11, ok=False, out_of_memory=True)  # the device disagrees
    assert not of(Fail, acts) and set(of(Unload, acts)) == {Unload("A", UnloadReason.SWAP), Unload("B", UnloadReason.SWAP)}
    assert c.state_of("C") == "unloaded" and len(c.queues["C"]) == 1  # its request waits for the retry
    c.unload_done("A", 12)
    assert of(Load, c.unload_done("B", 12)) == [Load("C")]
    assert Grant(3, "C") in c.load_done("C", 13, ok=True, peak_memory_bytes=4 * GiB)
    assert c.oom_retry is None
    c.check_invariants()


def test_a_load_out_of_memory_twice_is_refused_naming_what_holds_the_device_and_the_model_stays_unloaded() -> None:
    c = core(A=2 * GiB, P=2 * GiB, C=4 * GiB)
    c.models["P"].pin = True
    resident(c, "P", 0, 1)
    resident(c, "A", 0, 2)
    c.metered(5, 4 * GiB + 1 * GiB, TOTAL)
    c.arrive(3, "C", 10)
    c.load_done("C", 11, ok=False, out_of_memory=True)
    assert of(Load, c.unload_done("A", 12)) == [Load("C")]
    fails = of(Fail, c.load_done("C", 13, ok=False, out_of_memory=True))
    assert [(f.req_id, f.kind) for f in fails] == [(3, FailKind.OUT_OF_MEMORY)]
    assert "P 2048 MiB" in fails[0].message and "not ours 1024 MiB" in fails[0].message
    assert c.state_of("C") == "unloaded" and not c.queues["C"] and c.oom_retry is None
    assert Load("C") in c.arrive(4, "C", 20)  # not failed for good: the next request tries again
    c.check_invariants()


def test_a_load_out_of_memory_with_nothing_to_evict_is_refused_at_once() -> None:
    c = core(C=4 * GiB)
    c.arrive(1, "C", 0)
    fails = of(Fail, c.load_done("C", 1, ok=False, out_of_memory=True))
    assert [f.kind for f in fails] == [FailKind.OUT_OF_MEMORY] and "nothing idle" in fails[0].message


def test_a_load_out_of_memory_that_no_one_waits_for_any_more_evicts_nothing() -> None:
    c = core(A=2 * GiB, C=4 * GiB)
    resident(c, "A", 0, 1)
    c.arrive(2, "C", 10, timeout_s=5.0)
    assert [f.kind for f in of(Fail, c.tick(16))] == [FailKind.DEADLINE]  # its caller gave up during the load
    assert c.load_done("C", 17, ok=False, out_of_memory=True) == []
    assert c.swap is None and c.oom_retry is None and "A" in c.resident and not c.resident["A"].draining


# Random traces with memory not ours coming and going -----------------------------------------------


@st.composite
def foreign_traces(draw):
    names = "ABC"[:draw(st.integers(2, 3))]
    sizes = {m: draw(st.integers(1, 6)) * GiB for m in names}
    events = draw(st.lists(st.tuples(st.sampled_from(["arrive", "release", "meter", "done", "tick"]),
                                     st.sampled_from(names), st.integers(0, 10), st.booleans()),
                           min_size=1, max_size=80))
    return sizes, events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(foreign_traces())
def test_random_traces_with_foreign_memory_keep_the_budget_and_answer_everyone(trace) -> None:
    sizes, events = trace
    c = core(**sizes)
    waiting: set[int] = set()
    held: dict[int, str] = {}
    now, next_id = 0.0, 1

    def apply(actions: list) -> None:
        for a in actions:
            if isinstance(a, Grant):
                waiting.discard(a.req_id)
                held[a.req_id] = a.model
            elif isinstance(a, Fail):
                waiting.discard(a.req_id)
        c.check_invariants()

    for kind, model, gib, flag in events:
        now += 0.7
        if kind == "arrive":
            waiting.add(next_id)
            apply(c.arrive(next_id, model, now, timeout_s=30.0))
            next_id += 1
        elif kind == "release" and held:
            rid = sorted(held)[0]
            apply(c.release(held.pop(rid), now))
        elif kind == "meter":  # the device: what the ledger charges, plus gib GiB not ours
            apply(c.metered(now, c.used_bytes() + gib * GiB, TOTAL))
        elif kind == "done" and c.loading is not None:  # flag: the load ran out of device memory
            apply(c.load_done(c.loading, now, ok=not flag, out_of_memory=flag, peak_memory_bytes=sizes[c.loading]))
        elif kind == "done" and c.unloading:
            apply(c.unload_done(sorted(c.unloading)[0], now))
        elif kind == "tick":
            apply(c.tick(now))
        if c.rechecking:
            apply(c.rechecked(now, device_used_bytes=None, total_bytes=TOTAL))
    # Drain: finish everything in flight, release everything held, let every deadline pass.
    for _ in range(40):
        now += 1
        for rid in sorted(held):
            apply(c.release(held.pop(rid), now))
        if c.loading is not None:
            apply(c.load_done(c.loading, now, ok=True, peak_memory_bytes=sizes[c.loading]))
        elif c.unloading:
            apply(c.unload_done(sorted(c.unloading)[0], now))
        if c.rechecking:
            apply(c.rechecked(now, device_used_bytes=None, total_bytes=TOTAL))
        apply(c.tick(now))
    assert not waiting, f"requests never answered: {waiting}"
    assert c.used_bytes() <= c.budget_bytes
