"""The coordinator's Core on recorded and random traces under a virtual clock (the same Core the
gateway runs), checking its invariants after every event."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.coordinator import sim
from gateway.coordinator.core import (
    Core,
    Fail,
    FailKind,
    Grant,
    Held,
    InvariantBroken,
    Load,
    Released,
    Unload,
    UnloadAnswer,
    UnloadOutcome,
    UnloadReason,
)
from gateway.coordinator.policy import BULK, INTERACTIVE, ModelInfo, PolicyConfig
from gateway.coordinator.sim import SimModel, TraceRequest, TraceUnload

pytestmark = pytest.mark.unit

GiB = 2**30


def core(budget=10 * GiB, family: str | None = None, **models: int) -> Core:
    return Core("test", budget, {m: ModelInfo(m, b, family=family) for m, b in models.items()}, config=PolicyConfig())


def freed(nbytes: int, *, verified: bool = True, **kwargs) -> Released:
    """A release as the effects report it: the service measured ``nbytes`` freed."""
    return Released(nbytes, verified, 0.1, "test release", **kwargs)


def loaded(c: Core, model: str, now: float, *, req_id: int, peak: int) -> None:
    """``model`` resident with one request (``req_id``) in flight."""
    c.arrive(req_id, model, now)
    assert Grant(req_id, model) in c.load_done(model, now + 1, ok=True, peak_memory_bytes=peak)


def test_requests_arriving_during_a_load_join_it() -> None:
    c = core(A=4 * GiB)
    acts = c.arrive(1, "A", 0.0)
    assert [a for a in acts if isinstance(a, Load)] == [Load("A")]
    for i in range(2, 6):
        acts = c.arrive(i, "A", 0.1 * i)
        assert not [a for a in acts if isinstance(a, (Load, Grant))]  # no second load, no early grant
    acts = c.load_done("A", 2.0, ok=True, peak_memory_bytes=3 * GiB)
    assert sorted(a.req_id for a in acts if isinstance(a, Grant)) == [1, 2, 3, 4, 5]
    assert c.resident["A"].charged_bytes == 3 * GiB  # measured, not the estimate


def test_a_model_with_requests_in_flight_is_never_unloaded() -> None:
    c = core(budget=6 * GiB, A=4 * GiB, B=4 * GiB)
    c.arrive(1, "A", 0.0)
    c.load_done("A", 2.0, ok=True, peak_memory_bytes=4 * GiB)
    assert c.arrive(2, "A", 2.1) == [Grant(2, "A")]
    acts = c.arrive(3, "B", 2.2, lane=INTERACTIVE)  # wants A out at once
    assert not [a for a in acts if isinstance(a, Unload)]
    assert c.resident["A"].draining
    assert c.arrive(4, "A", 2.3)[0:1] != [Grant(4, "A")]  # draining: no new grants
    acts = c.release("A", 2.5)
    assert not [a for a in acts if isinstance(a, Unload)]  # one lease still held
    acts = c.release("A", 2.6)
    assert Unload("A", UnloadReason.SWAP) in acts
    acts = c.unload_done("A", 3.0)
    assert Load("B") in acts


def test_the_ledger_never_exceeds_the_budget_while_a_swap_is_in_flight() -> None:
    c = core(budget=6 * GiB, A=4 * GiB, B=4 * GiB)
    c.arrive(1, "A", 0.0)
    c.load_done("A", 1.0, ok=True, peak_memory_bytes=4 * GiB)
    c.release("A", 1.1)
    acts = c.arrive(2, "B", 5.0)
    assert Unload("A", UnloadReason.SWAP) in acts and Load("B") not in acts  # load only after the release is verified
    assert c.used_bytes() <= c.budget_bytes
    acts = c.unload_done("A", 5.5)
    assert Load("B") in acts and c.used_bytes() == 4 * GiB


def test_a_failed_load_fails_its_waiters_and_the_next_request_retries() -> None:
    c = core(A=4 * GiB)
    c.arrive(1, "A", 0.0)
    c.arrive(2, "A", 0.1)
    acts = c.load_done("A", 1.0, ok=False, reason="weights are corrupt")
    assert {(a.req_id, a.kind) for a in acts if isinstance(a, Fail)} == {(1, FailKind.LOAD_FAILED), (2, FailKind.LOAD_FAILED)}
    assert Load("A") in c.arrive(3, "A", 2.0)


def test_full_queue_is_rejected_and_too_big_models_are_refused() -> None:
    c = Core("t", 10 * GiB, {"A": ModelInfo("A", 4 * GiB), "X": ModelInfo("X", 11 * GiB)}, max_queue=2)
    c.arrive(1, "A", 0)
    c.arrive(2, "A", 0)
    assert [a.kind for a in c.arrive(3, "A", 0) if isinstance(a, Fail)] == [FailKind.QUEUE_FULL]
    assert [a.kind for a in c.arrive(4, "X", 0) if isinstance(a, Fail)] == [FailKind.TOO_LARGE]


def test_a_request_that_cannot_be_ready_in_time_is_refused_at_once_and_waiting_ones_expire() -> None:
    models = {"A": ModelInfo("A", 4 * GiB, load_s=20.0), "B": ModelInfo("B", 4 * GiB, load_s=1.0)}
    c = Core("t", 6 * GiB, models)
    assert [a.kind for a in c.arrive(1, "A", 0, timeout_s=5) if isinstance(a, Fail)] == [FailKind.NOT_READY_IN_TIME]
    c.arrive(2, "B", 0, timeout_s=5)
    c.load_done("B", 1.0, ok=True, peak_memory_bytes=4 * GiB)
    c.arrive(3, "B", 1.1)  # B stays busy
    c.arrive(4, "A", 1.2, timeout_s=30)
    acts = c.tick(31.5)
    assert Fail(4, "A", FailKind.DEADLINE, "A was not ready within the request's deadline") in acts


def test_operator_unload_drains_then_charges_the_model_as_unloading_until_its_release() -> None:
    c = core(A=4 * GiB)
    loaded(c, "A", 0, req_id=1, peak=3 * GiB)
    acts = c.request_unload(100, "A", 2)
    assert not [a for a in acts if isinstance(a, (Unload, UnloadAnswer))]  # a request is in flight
    assert c.state_of("A") == "draining"
    assert c.arrive(2, "A", 2.5)[0:1] != [Grant(2, "A")]  # draining: no new grants
    acts = c.release("A", 3)
    assert Unload("A", UnloadReason.REQUEST) in acts
    assert c.state_of("A") == "unloading" and c.unloading == {"A": 3 * GiB} and c.used_bytes() == 3 * GiB
    c.check_invariants()
    acts = c.unload_done("A", 4, freed(3 * GiB))
    assert UnloadAnswer(100, "A", UnloadOutcome.RELEASED) in acts
    # Its waiting request stayed queued and brings it back.
    assert Load("A") in acts and c.loading_bytes == 3 * GiB


def test_operator_unload_without_drain_is_refused_while_requests_are_in_flight() -> None:
    c = core(A=4 * GiB)
    loaded(c, "A", 0, req_id=1, peak=3 * GiB)
    assert c.request_unload(100, "A", 2, drain=False) == [UnloadAnswer(100, "A", UnloadOutcome.IN_USE)]
    assert c.state_of("A") == "ready" and c.arrive(2, "A", 2.1) == [Grant(2, "A")]  # nothing changed
    c.release("A", 3)
    c.release("A", 3)
    acts = c.request_unload(101, "A", 4, drain=False)  # idle now: unloaded at once
    assert Unload("A", UnloadReason.REQUEST) in acts


def test_operator_unload_of_a_model_not_resident_is_answered_at_once() -> None:
    c = core(A=4 * GiB)
    assert c.request_unload(100, "A", 0) == [UnloadAnswer(100, "A", UnloadOutcome.NOT_RESIDENT)]
    assert c.used_bytes() == 0 and not c.tickets


def test_operator_unload_of_a_loading_model_unloads_it_once_loaded() -> None:
    c = core(A=4 * GiB)
    c.arrive(1, "A", 0)
    assert not [a for a in c.request_unload(100, "A", 0.5) if isinstance(a, UnloadAnswer)]
    c.check_invariants()
    acts = c.load_done("A", 1, ok=True, peak_memory_bytes=3 * GiB)
    assert Grant(1, "A") not in acts and Unload("A", UnloadReason.REQUEST) in acts  # its waiter stays queued
    acts = c.unload_done("A", 2)
    assert UnloadAnswer(100, "A", UnloadOutcome.RELEASED) in acts and Load("A") in acts


def test_operator_unload_of_a_model_whose_load_fails_is_answered_not_resident() -> None:
    c = core(A=4 * GiB)
    c.arrive(1, "A", 0)
    c.request_unload(100, "A", 0.5)
    acts = c.load_done("A", 1, ok=False, reason="weights are corrupt")
    assert UnloadAnswer(100, "A", UnloadOutcome.NOT_RESIDENT) in acts and not c.tickets and not c.pending_unloads


def test_operator_unload_of_a_swap_victim_is_answered_by_its_release() -> None:
    c = core(budget=6 * GiB, A=4 * GiB, B=4 * GiB)
    loaded(c, "A", 0, req_id=1, peak=4 * GiB)
    c.arrive(2, "B", 2, lane=INTERACTIVE)  # A becomes a draining victim
    c.request_unload(100, "A", 2.1)
    c.request_unload(101, "A", 2.2)
    acts = c.release("A", 3)
    assert acts.count(Unload("A", UnloadReason.SWAP)) == 1  # one unload, whoever asked
    acts = c.unload_done("A", 4)
    assert {a for a in acts if isinstance(a, UnloadAnswer)} == {UnloadAnswer(100, "A", UnloadOutcome.RELEASED),
                                                                UnloadAnswer(101, "A", UnloadOutcome.RELEASED)}
    assert Load("B") in acts


def test_operator_unload_of_a_model_that_vanishes_meanwhile_is_answered_not_resident() -> None:
    c = core(A=4 * GiB)
    loaded(c, "A", 0, req_id=1, peak=3 * GiB)
    c.request_unload(100, "A", 2)
    assert UnloadAnswer(100, "A", UnloadOutcome.NOT_RESIDENT) in c.vanished("A", 3)
    c.check_invariants()


def test_what_a_release_leaves_in_its_worker_moves_to_a_model_of_the_same_family() -> None:
    c = core(family="caption", A=4 * GiB, B=1 * GiB)
    loaded(c, "A", 0, req_id=1, peak=3 * GiB)  # the first in the worker: it carries the framework
    c.arrive(2, "B", 2)
    c.load_done("B", 3, ok=True, peak_memory_bytes=1 * GiB)
    c.release("A", 4)
    c.request_unload(100, "A", 5)
    c.unload_done("A", 6, freed(1 * GiB))  # 2 GiB stayed with the worker that B still uses
    assert c.resident["B"].charged_bytes == 3 * GiB and c.used_bytes() == 3 * GiB


# Reconciliation ----------------------------------------------------------------------------------


def two_families(budget: int = 10 * GiB) -> Core:
    models = {"A": ModelInfo("A", 4 * GiB, family="caption"), "B": ModelInfo("B", 2 * GiB, family="caption"),
              "T": ModelInfo("T", 2 * GiB, family="asr")}
    return Core("test", budget, models)


def test_reconcile_forgets_models_gone_at_their_service() -> None:
    c = two_families()
    loaded(c, "A", 0, req_id=1, peak=3 * GiB)
    loaded(c, "T", 2, req_id=2, peak=1 * GiB)
    c.reconcile("caption", {}, 5)
    assert "A" not in c.resident and "T" in c.resident  # only that family's models
    assert c.used_bytes() == 1 * GiB


def test_reconcile_charges_models_loaded_at_the_service_that_the_ledger_missed() -> None:
    c = two_families()
    c.reconcile("caption", {"A": Held(peak_memory_bytes=3 * GiB), "B": Held(peak_memory_bytes=None)}, 1)
    assert c.resident["A"].charged_bytes == 3 * GiB  # its measurement
    assert c.resident["B"].charged_bytes == 2 * GiB  # not measured: its footprint
    assert c.state_of("A") == c.state_of("B") == "ready"


def test_reconcile_unloads_a_model_it_finds_if_the_budget_cannot_hold_it() -> None:
    c = two_families(budget=4 * GiB)
    loaded(c, "T", 0, req_id=1, peak=2 * GiB)
    acts = c.reconcile("caption", {"A": Held(peak_memory_bytes=3 * GiB)}, 5)
    assert Unload("A", UnloadReason.RECONCILE) in acts
    assert c.state_of("A") == "unloading" and c.used_bytes() <= c.budget_bytes
    c.check_invariants()


def test_reconcile_leaves_a_model_loading_or_unloading_alone() -> None:
    c = two_families(budget=6 * GiB)
    c.arrive(1, "A", 0)  # loading here
    c.reconcile("caption", {}, 0.5)
    assert c.state_of("A") == "loading"
    c.load_done("A", 1, ok=True, peak_memory_bytes=4 * GiB)
    c.release("A", 1.1)
    c.request_unload(100, "A", 2)  # unloading here
    c.reconcile("caption", {"A": Held(peak_memory_bytes=4 * GiB)}, 2.5)
    assert c.state_of("A") == "unloading" and c.used_bytes() == 4 * GiB  # not charged twice
    c.unload_done("A", 3)
    # At the service: still loading, or still unloading, is not settled either way.
    c.reconcile("caption", {"B": Held(peak_memory_bytes=None, settled=False)}, 4)
    assert c.state_of("B") == "unloaded"
    loaded(c, "B", 5, req_id=2, peak=1 * GiB)
    c.reconcile("caption", {"B": Held(peak_memory_bytes=1 * GiB, settled=False)}, 7)
    assert c.state_of("B") == "ready"


def test_reconcile_with_an_unreachable_service_leaves_nothing_of_it_resident() -> None:
    c = two_families()
    loaded(c, "A", 0, req_id=1, peak=3 * GiB)
    loaded(c, "B", 2, req_id=2, peak=1 * GiB)
    c.reconcile("caption", None, 5)
    assert not c.resident and c.used_bytes() == 0


def test_reconcile_ignores_what_changed_while_the_service_was_read() -> None:
    c = two_families()
    c.arrive(1, "A", 0)
    since = c.epoch  # the read begins while A loads; the service answers "not loaded"
    c.load_done("A", 1, ok=True, peak_memory_bytes=3 * GiB)
    c.reconcile("caption", {}, 2, since=since)
    assert c.state_of("A") == "ready"  # the reply is older than the load
    c.reconcile("caption", {}, 3, since=c.epoch)
    assert c.state_of("A") == "unloaded"


def test_invariant_check_catches_a_lying_ledger() -> None:
    c = core(budget=5 * GiB, A=4 * GiB)
    c.arrive(1, "A", 0)
    c.load_done("A", 1, ok=True, peak_memory_bytes=6 * GiB)  # measured bigger than the whole budget
    with pytest.raises(InvariantBroken):
        c.check_invariants()


# Recorded traces ---------------------------------------------------------------------------------


@pytest.mark.parametrize("trace_name", ["interleaved", "zipf_poisson", "bursts", "interactive_in_bulk"])
def test_recorded_traces_keep_every_invariant_and_answer_everyone(trace_name: str) -> None:
    models, budget = sim.one_at_a_time()
    trace = getattr(sim, trace_name)()
    config = PolicyConfig(max_wait_s=30)
    res = sim.simulate_core(trace, models, budget, config)  # check=True: invariants after every event
    assert len(res.outcomes) == len(trace)
    assert all(o.granted is not None or o.failed for o in res.outcomes)
    assert res.double_loads == 0
    assert res.max_used_bytes <= budget
    one_swap = max(m.load_s for m in models.values()) + max(m.unload_s for m in models.values())
    assert max(res.waits()) <= config.max_wait_s + one_swap + 0.5  # + one drain of a 50 ms batch


def test_interleaved_traffic_swaps_far_less_than_fifo() -> None:
    models, budget = sim.one_at_a_time()
    trace = sim.interleaved()
    ours = sim.simulate_core(trace, models, budget, PolicyConfig(max_wait_s=30))
    fifo = sim.simulate_fifo(trace, models, budget)
    assert ours.swaps <= 0.4 * fifo.swaps


def test_interactive_requests_are_not_stuck_behind_bulk_work() -> None:
    models, budget = sim.one_at_a_time()
    trace = sim.interactive_in_bulk()
    ours = sim.simulate_core(trace, models, budget, PolicyConfig(max_wait_s=30))
    fifo = sim.simulate_fifo(trace, models, budget)
    assert ours.pct(95, INTERACTIVE) <= fifo.pct(95, INTERACTIVE)
    one_swap = 2.5
    # Patience 0: at worst the swap already in flight (it cannot be called back), then its own swap,
    # plus the drain of one 50 ms batch.
    assert max(ours.waits(INTERACTIVE)) <= 2 * one_swap + 0.1


# Random traces -----------------------------------------------------------------------------------

model_names = "ABCD"


@st.composite
def scenarios(draw):
    n_models = draw(st.integers(2, 4))
    names = model_names[:n_models]
    budget = 10 * GiB
    models = {m: SimModel(footprint_bytes=draw(st.integers(1, 10)) * GiB,
                          load_s=draw(st.floats(0.5, 3.0)), unload_s=draw(st.floats(0.1, 1.0)),
                          batch_s=draw(st.floats(0.01, 0.2)), max_batch=draw(st.integers(1, 8)),
                          pin=False, priority=draw(st.integers(0, 2)),
                          group=draw(st.sampled_from([None, None, "g"])),
                          fail_load=draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()))
              for m in names}
    n = draw(st.integers(1, 120))
    times = sorted(draw(st.lists(st.floats(0, 60), min_size=n, max_size=n)))
    trace = [TraceRequest(t, draw(st.sampled_from(names)), draw(st.sampled_from([BULK, INTERACTIVE])),
                          timeout_s=draw(st.sampled_from([300.0, 300.0, 20.0])))
             for t in times]
    unloads = [TraceUnload(t, draw(st.sampled_from(names)), draw(st.booleans()))
               for t in draw(st.lists(st.floats(0, 60), max_size=6))]
    return models, budget, trace, unloads


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_traces_never_break_the_budget_load_twice_or_leave_a_request_unanswered(scenario) -> None:
    models, budget, trace, unloads = scenario
    config = PolicyConfig(max_wait_s=30, bulk_patience_s=10, interactive_patience_s=0)
    res = sim.simulate_core(trace, models, budget, config, unloads=unloads)  # raises InvariantBroken on any violation
    assert res.max_used_bytes <= budget
    assert res.double_loads == 0
    for o in res.outcomes:
        assert (o.granted is not None) != (o.failed is not None), o  # answered exactly once
    assert {t: len(a) for t, a in res.unload_answers.items()} == {t: 1 for t in range(len(unloads))}  # operators too
    one_swap = max(m.load_s for m in models.values()) + max(m.unload_s for m in models.values())
    drain = max(m.batch_s for m in models.values()) * (1 + max(len(trace), 1))  # in-flight work finishing
    for o in res.outcomes:
        if o.granted is not None:
            assert o.wait_s <= config.max_wait_s + one_swap + drain, (o, res.summary())


def test_a_first_measurement_over_the_estimate_evicts_others_back_inside_the_budget() -> None:
    c = core(budget=10 * GiB, A=4 * GiB, B=4 * GiB)
    c.arrive(1, "A", 0)
    c.load_done("A", 1, ok=True, peak_memory_bytes=4 * GiB)
    c.release("A", 1.1)
    c.arrive(2, "B", 5)  # estimate 4 GiB fits beside A
    acts = c.load_done("B", 6, ok=True, peak_memory_bytes=7 * GiB)  # but B really needs 7
    assert Grant(2, "B") in acts  # B's waiters are served
    assert Unload("A", UnloadReason.OVER_BUDGET) in acts  # and A goes at once (idle)
    c.unload_done("A", 6.5)
    assert c.used_bytes() == 7 * GiB <= c.budget_bytes
    c.check_invariants()
