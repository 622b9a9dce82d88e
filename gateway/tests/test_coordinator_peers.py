"""The replay's peer (llama-swap's router, ``coordinator/peers.py``) and its worker costs behave as the
originals do, so the bench measures against the real thing rather than a strawman."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.coordinator import sim
from gateway.coordinator.policy import BULK, INTERACTIVE, PolicyConfig
from gateway.coordinator.sim import SimModel, TraceRequest, WorkerCosts, Workers

pytestmark = pytest.mark.unit

GiB = 2**30


def one_at_a_time() -> tuple[dict[str, SimModel], int]:
    return {m: SimModel(6 * GiB, load_s=2.0, unload_s=0.5, batch_s=0.05) for m in "ABC"}, 10 * GiB


def test_llama_swap_lets_one_swap_serve_every_request_queued_for_its_model() -> None:
    models, budget = one_at_a_time()
    trace = [TraceRequest(0.1 * i, m) for i, m in enumerate("ABCABC")]  # "A B C A B C -> A A B B C C"
    peer = sim.simulate_fifo(trace, models, budget, group_same_model=True)
    fifo = sim.simulate_fifo(trace, models, budget)
    assert peer.swaps == 3 and fifo.swaps == 6
    granted = {o.req_id: o.granted for o in peer.outcomes}
    assert granted[0] == granted[3] == pytest.approx(2.0)  # the second A joined the swap in flight
    assert granted[1] == granted[4] and granted[2] == granted[5]


def test_llama_swap_serves_a_ready_model_at_once_and_swaps_when_its_in_flight_work_is_done() -> None:
    models, budget = one_at_a_time()
    trace = [TraceRequest(0.0, "A"), TraceRequest(1.5, "B"), TraceRequest(2.01, "A")]
    peer = sim.simulate_fifo(trace, models, budget, group_same_model=True)
    a, b, a2 = peer.outcomes
    assert a.granted == pytest.approx(2.0)
    assert a2.granted == pytest.approx(2.01)  # ready, and B's swap still waits for A's in-flight work
    assert b.granted == pytest.approx(2.1 + 0.5 + 2.0)  # A's two batches end at 2.1, then stop A, start B
    assert peer.swaps == 2


def test_a_warm_spare_makes_a_load_cheap_until_it_is_taken_sooner_than_its_imports_take() -> None:
    models = {m: SimModel(GiB, family="caption") for m in "AB"}
    spare = Workers(models, {"caption": WorkerCosts(6.84, 0.24, 0.4, spare=True)})
    assert spare.load_s("A", 0.0) == pytest.approx(0.24)  # the service started with a spare
    assert spare.unload_s("A") == pytest.approx(0.4)  # its last model: the worker ends
    spare.gone("A")
    assert spare.load_s("B", 1.0) == pytest.approx(6.84 - 1.0)  # the next spare is still importing
    assert spare.load_s("A", 7.0) == pytest.approx(0.24)  # a live worker of the family
    assert spare.unload_s("A") == pytest.approx(0.05)  # B stays: the worker too
    cold = Workers(models, {"caption": WorkerCosts(6.84, 0.24, 0.4)})
    assert cold.load_s("A", 0.0) == pytest.approx(6.84)


def test_every_policy_pays_the_same_worker_costs() -> None:
    models, budget = one_at_a_time()
    for m in models.values():
        m.family = "caption"
    costs = {"caption": WorkerCosts(6.84, 0.24, 0.4)}
    trace = [TraceRequest(0.0, "A"), TraceRequest(10.0, "B")]
    ours = sim.simulate_core(trace, models, budget, workers=costs)
    for res in (ours, sim.simulate_fifo(trace, models, budget, workers=costs),
                sim.simulate_fifo(trace, models, budget, group_same_model=True, workers=costs)):
        assert [o.wait_s for o in res.outcomes] == pytest.approx([6.84, 0.4 + 6.84]), res.policy


@st.composite
def worker_scenarios(draw):
    families = {"f": WorkerCosts(draw(st.floats(1.0, 8.0)), draw(st.floats(0.05, 0.5)), draw(st.floats(0.1, 0.6)),
                                 spare=draw(st.booleans())),
                "g": WorkerCosts(draw(st.floats(1.0, 8.0)), draw(st.floats(0.05, 0.5)), draw(st.floats(0.1, 0.6)),
                                 spare=draw(st.booleans()))}
    models = {m: SimModel(draw(st.integers(1, 10)) * GiB, batch_s=draw(st.floats(0.01, 0.2)),
                          max_batch=draw(st.integers(1, 8)), family=draw(st.sampled_from("fg")))
              for m in "ABCD"}
    n = draw(st.integers(1, 100))
    times = sorted(draw(st.lists(st.floats(0, 60), min_size=n, max_size=n)))
    trace = [TraceRequest(t, draw(st.sampled_from("ABCD")), draw(st.sampled_from([BULK, INTERACTIVE]))) for t in times]
    return models, families, trace


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worker_scenarios())
def test_learnt_costs_that_change_from_swap_to_swap_keep_every_invariant_and_the_wait_bound(scenario) -> None:
    models, families, trace = scenario
    config = PolicyConfig(max_wait_s=30)
    res = sim.simulate_core(trace, models, 10 * GiB, config, workers=families)  # invariants after every event
    assert res.double_loads == 0 and res.max_used_bytes <= 10 * GiB
    one_swap = max(c.cold_load_s for c in families.values()) + max(c.stop_s for c in families.values())
    drain = max(m.batch_s for m in models.values()) * (1 + len(trace))
    for o in res.outcomes:
        assert (o.granted is not None) != (o.failed is not None), o
        if o.granted is not None:
            assert o.wait_s <= config.max_wait_s + one_swap + drain, (o, res.summary())
