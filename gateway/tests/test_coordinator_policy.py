"""The pure policy: which model next, which residents to evict. No clock, no I/O."""

from __future__ import annotations

import pytest

from gateway.coordinator.policy import (
    BULK,
    INTERACTIVE,
    ModelInfo,
    PolicyConfig,
    Resident,
    Snapshot,
    Waiter,
    choose_victims,
    plan_swap,
)

pytestmark = pytest.mark.unit

GiB = 2**30


def snap(now=100.0, budget=10 * GiB, resident=None, queues=None, models=None, **cfg) -> Snapshot:
    models = models or {m: ModelInfo(m, 4 * GiB) for m in "ABCD"}
    resident = resident or {}
    q = {m: [] for m in models}
    for m, waiters in (queues or {}).items():
        q[m] = waiters
    return Snapshot(now=now, budget_bytes=budget, models=models, resident=resident, queues=q,
                    config=PolicyConfig(**cfg))


def w(model, arrived, lane=BULK, i=0) -> Waiter:
    return Waiter(i, model, lane, arrived, arrived + 300)


def test_a_model_that_fits_in_free_memory_loads_without_evicting() -> None:
    s = snap(resident={"A": Resident(4 * GiB, last_used=99.9)}, queues={"B": [w("B", 99.0)]})
    plan = plan_swap(s)
    assert plan is not None and plan.load == "B" and plan.evict == ()


def test_idle_residents_are_evicted_at_once() -> None:
    s = snap(resident={"A": Resident(4 * GiB, last_used=50), "B": Resident(4 * GiB, last_used=60)},
             queues={"C": [w("C", 99.9)]})
    plan = plan_swap(s)
    assert plan.load == "C" and plan.evict == ("A",)  # least recently used of the idle ones
    assert not plan.wait_for_drain


def test_a_busy_resident_keeps_the_device_while_bulk_work_is_patient() -> None:
    s = snap(budget=6 * GiB, resident={"A": Resident(4 * GiB, in_flight=2, last_used=99.9)},
             queues={"B": [w("B", 95.0)]}, bulk_patience_s=10)
    assert plan_swap(s) is None


def test_a_busy_resident_is_drained_and_evicted_once_patience_runs_out() -> None:
    s = snap(budget=6 * GiB, resident={"A": Resident(4 * GiB, in_flight=2, last_used=99.9)},
             queues={"B": [w("B", 89.0)]}, bulk_patience_s=10)
    plan = plan_swap(s)
    assert plan.load == "B" and plan.evict == ("A",) and plan.wait_for_drain


def test_enough_waiting_work_justifies_a_swap_before_patience_runs_out() -> None:
    s = snap(budget=6 * GiB, resident={"A": Resident(4 * GiB, in_flight=1, last_used=99.9)},
             queues={"B": [w("B", 99.0, i=i) for i in range(16)]}, bulk_patience_s=10, swap_batch=16)
    assert plan_swap(s).load == "B"


def test_interactive_requests_do_not_wait_for_patience() -> None:
    s = snap(budget=6 * GiB, resident={"A": Resident(4 * GiB, in_flight=3, last_used=99.9)},
             queues={"B": [w("B", 99.9, INTERACTIVE)]}, bulk_patience_s=10, interactive_patience_s=0)
    assert plan_swap(s).load == "B"


def test_interactive_goes_before_older_bulk_work() -> None:
    s = snap(budget=6 * GiB, queues={"B": [w("B", 10.0)], "C": [w("C", 99.0, INTERACTIVE)]})
    assert plan_swap(s).load == "C"


def test_patience_shrinks_so_no_request_waits_past_max_wait() -> None:
    # 30 s max wait, 2.5 s swaps, 3 models waiting: patience is at most 30 - 3 * 2.5 = 22.5 s even
    # though bulk patience says 100 s.
    models = {m: ModelInfo(m, 4 * GiB, load_s=2.0, unload_s=0.5) for m in "ABCD"}
    busy = {"A": Resident(4 * GiB, in_flight=1, last_used=99.9)}
    waiting = {"B": [w("B", 100 - 22.6)], "C": [w("C", 99.0)], "D": [w("D", 99.5)]}
    s = snap(budget=6 * GiB, models=models, resident=busy, queues=waiting, bulk_patience_s=100, max_wait_s=30)
    assert plan_swap(s).load == "B"
    waiting["B"] = [w("B", 100 - 22.0)]
    s = snap(budget=6 * GiB, models=models, resident=busy, queues=waiting, bulk_patience_s=100, max_wait_s=30)
    assert plan_swap(s) is None


def test_pinned_models_are_never_victims() -> None:
    models = {"A": ModelInfo("A", 4 * GiB, pin=True), "B": ModelInfo("B", 4 * GiB)}
    s = snap(budget=6 * GiB, models=models, resident={"A": Resident(4 * GiB, last_used=0)}, queues={"B": [w("B", 0)]})
    assert choose_victims(s, 2 * GiB, "B", allow_busy=True) is None
    assert plan_swap(s) is None


def test_lower_priority_goes_first_among_idle_victims() -> None:
    models = {"A": ModelInfo("A", 4 * GiB, priority=5), "B": ModelInfo("B", 4 * GiB, priority=0), "C": ModelInfo("C", 4 * GiB)}
    s = snap(models=models, resident={"A": Resident(4 * GiB, last_used=1), "B": Resident(4 * GiB, last_used=50)},
             queues={"C": [w("C", 99)]})
    assert choose_victims(s, 2 * GiB, "C", allow_busy=False) == ("B",)


def test_a_model_of_an_exclusive_group_evicts_its_group_mates_even_when_memory_suffices() -> None:
    models = {"A": ModelInfo("A", 1 * GiB, group="big"), "B": ModelInfo("B", 1 * GiB, group="big"), "C": ModelInfo("C", 1 * GiB)}
    s = snap(models=models, resident={"A": Resident(1 * GiB, last_used=10), "C": Resident(1 * GiB, last_used=10)},
             queues={"B": [w("B", 99)]})
    plan = plan_swap(s)
    assert plan.load == "B" and plan.evict == ("A",)


def test_a_model_bigger_than_the_budget_is_never_planned() -> None:
    models = {"A": ModelInfo("A", 20 * GiB)}
    assert plan_swap(snap(models=models, queues={"A": [w("A", 0)]})) is None


def test_patience_pays_each_swap_at_its_learnt_cost() -> None:
    # A cold caption worker: 6.84 s to load, 0.4 s for the resident's worker to end (learnt, not the
    # 0.5 s guess). 3 models waiting, 30 s max wait: patience ends at 30 - 3 * 7.24 = 8.28 s.
    models = {m: ModelInfo(m, 4 * GiB, load_s=6.84, unload_s=0.4) for m in "ABCD"}
    busy = {"A": Resident(4 * GiB, in_flight=1, last_used=99.9)}
    waiting = {"B": [w("B", 100 - 8.3)], "C": [w("C", 99.0)], "D": [w("D", 99.5)]}
    s = snap(budget=6 * GiB, models=models, resident=busy, queues=waiting, bulk_patience_s=100, max_wait_s=30)
    assert plan_swap(s).load == "B"
    waiting["B"] = [w("B", 100 - 8.2)]
    s = snap(budget=6 * GiB, models=models, resident=busy, queues=waiting, bulk_patience_s=100, max_wait_s=30)
    assert plan_swap(s) is None
    models["A"].unload_s = 0.1  # a faster release learnt: the bound moves later (30 - 3 * 6.94 = 9.18 s)
    waiting["B"] = [w("B", 100 - 9.1)]
    s = snap(budget=6 * GiB, models=models, resident=busy, queues=waiting, bulk_patience_s=100, max_wait_s=30)
    assert plan_swap(s) is None


def test_a_big_queue_ends_the_residents_patience_but_the_older_work_goes_first() -> None:
    busy = {"A": Resident(4 * GiB, in_flight=1, last_used=99.9)}
    waiting = {"B": [w("B", 91.0)], "C": [w("C", 99.0, i=i) for i in range(16)]}
    s = snap(budget=6 * GiB, resident=busy, queues=waiting, bulk_patience_s=10, swap_batch=16)
    plan = plan_swap(s)
    assert plan.load == "B" and plan.evict == ("A",) and plan.wait_for_drain  # B waited longest
    waiting["C"] = waiting["C"][:15]
    assert plan_swap(snap(budget=6 * GiB, resident=busy, queues=waiting, bulk_patience_s=10, swap_batch=16)) is None
