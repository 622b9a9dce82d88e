"""The Core's rule for releases no one verified: their bytes stay charged until the truth is known
again (a quiet meter reading shows them back, the service's worker is gone, an operator forgets
them), requests they keep out wait for one re-read and are then refused, and the budget holds
throughout — on hand-written cases and on random traces with zombie workers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.coordinator import sim
from gateway.coordinator.core import Core, Fail, FailKind, Grant, Held, Load, Recheck, Released, Unload, UnloadReason
from gateway.coordinator.policy import BULK, INTERACTIVE, ModelInfo, PolicyConfig
from gateway.coordinator.sim import SimModel, TraceRequest, TraceUnload

pytestmark = pytest.mark.unit

GiB = 2**30


def core(budget: int = 4 * GiB) -> Core:
    models = {"A": ModelInfo("A", 3 * GiB, family="caption"), "B": ModelInfo("B", 3 * GiB, family="caption"),
              "K": ModelInfo("K", 1 * GiB, family="caption"), "T": ModelInfo("T", 1 * GiB, family="asr")}
    return Core("cuda:0", budget, models, config=PolicyConfig())


def resident(c: Core, model: str, now: float, peak: int) -> None:
    """``model`` loaded and idle."""
    c.arrive(now * 1000, model, now)
    c.load_done(model, now, ok=True, peak_memory_bytes=peak)
    c.release(model, now)


def unverified(nbytes: int, *, back: int = 0, used: int | None = 10 * GiB, **kwargs) -> Released:
    """A release the meter did not confirm: the service measured ``nbytes`` freed, NVML showed ``back``."""
    return Released(nbytes, False, 15.0, "NVML shows too little back", returned_bytes=back, device_used_bytes=used,
                    **{"worker_stopped": True, **kwargs})


def unloaded(c: Core, model: str, now: float, released: Released) -> list:
    c.request_unload(100, model, now)
    return c.unload_done(model, now + 0.5, released)


def test_an_unverified_release_keeps_what_nvml_did_not_show_back_charged() -> None:
    c = core()
    resident(c, "A", 1, 3 * GiB)
    unloaded(c, "A", 2, unverified(3 * GiB, back=1 * GiB))
    assert c.unverified.by_model == {"A": 2 * GiB} and c.used_bytes() == 2 * GiB and c.state_of("A") == "unloaded"
    c.check_invariants()
    # A verified release still drops the whole charge.
    resident(c, "T", 3, 1 * GiB)
    unloaded(c, "T", 4, Released(1 * GiB, True, 0.2, "NVML: 1024 MiB back"))
    assert c.used_bytes() == 2 * GiB


def test_a_service_that_did_not_unload_leaves_the_whole_charge_unverified_never_with_a_sibling() -> None:
    c = core(budget=8 * GiB)
    resident(c, "K", 1, 1 * GiB)
    resident(c, "A", 2, 3 * GiB)
    unloaded(c, "A", 3, unverified(0, used=None, unloaded=False, worker_stopped=False))
    assert c.unverified.by_model == {"A": 3 * GiB} and c.resident["K"].charged_bytes == 1 * GiB


def test_what_the_worker_kept_moves_to_a_sibling_and_only_the_rest_is_unverified() -> None:
    c = core(budget=8 * GiB)
    resident(c, "K", 1, 1 * GiB)
    resident(c, "A", 2, 3 * GiB)
    # The worker lives on (K): the service freed 2 GiB, NVML showed 1.5 GiB of them back.
    unloaded(c, "A", 3, unverified(2 * GiB, back=GiB * 3 // 2, worker_stopped=False))
    assert c.resident["K"].charged_bytes == 2 * GiB and c.unverified.by_model == {"A": GiB // 2}
    assert c.used_bytes() == GiB * 5 // 2


def test_a_request_kept_out_by_unverified_bytes_waits_for_one_recheck_then_is_refused() -> None:
    c = core()
    resident(c, "A", 1, 3 * GiB)
    unloaded(c, "A", 2, unverified(3 * GiB))
    acts = c.arrive(1, "B", 3)  # 3 GiB fits the 4 GiB budget, not beside 3 GiB unverified
    assert Recheck(("caption",)) in acts and not [a for a in acts if isinstance(a, (Fail, Load))]
    assert not [a for a in c.arrive(2, "B", 3.1) if isinstance(a, Recheck)]  # one recheck at a time
    assert Grant(3, "T") in c.arrive(3, "T", 3.2) + c.load_done("T", 3.3, ok=True, peak_memory_bytes=1 * GiB)  # T fits
    acts = c.rechecked(4, device_used_bytes=10 * GiB)  # the meter shows nothing back
    assert {(a.req_id, a.kind) for a in acts if isinstance(a, Fail)} == {(1, FailKind.MEMORY_UNVERIFIED),
                                                                         (2, FailKind.MEMORY_UNVERIFIED)}
    assert c.unverified.by_model == {"A": 3 * GiB} and not c.queues["B"]
    c.check_invariants()


def test_a_quiet_meter_reading_that_shows_them_back_lets_them_go() -> None:
    c = core()
    resident(c, "A", 1, 3 * GiB)
    unloaded(c, "A", 2, unverified(3 * GiB, used=10 * GiB))  # baseline: 7 GiB outside the ledger
    c.arrive(1, "B", 3)
    acts = c.rechecked(4, device_used_bytes=7 * GiB + GiB // 2)  # 2.5 GiB of 3 fell: more than 80 %
    assert c.unverified.by_model == {} and Load("B") in acts and not [a for a in acts if isinstance(a, Fail)]


def test_a_recheck_during_a_load_refuses_nobody_and_the_loads_end_asks_again() -> None:
    c = core(budget=5 * GiB)
    resident(c, "A", 1, 3 * GiB)
    unloaded(c, "A", 2, unverified(3 * GiB))
    assert Load("T") in c.arrive(1, "T", 3)  # 1 GiB fits beside the 3 unverified
    assert not [a for a in c.arrive(2, "B", 3.1) if isinstance(a, (Recheck, Fail))]  # B waits for the load
    acts = c.rechecked(3.2, device_used_bytes=7 * GiB)  # the periodic one: a load is in flight, proving nothing
    assert not [a for a in acts if isinstance(a, (Recheck, Fail))] and c.unverified.by_model == {"A": 3 * GiB}
    acts = c.load_done("T", 4, ok=True, peak_memory_bytes=1 * GiB)
    assert Recheck(("caption",)) in acts


def test_the_services_worker_gone_lets_its_familys_unverified_bytes_go() -> None:
    c = core(budget=8 * GiB)
    resident(c, "A", 1, 3 * GiB)
    resident(c, "T", 2, 1 * GiB)
    since = c.epoch  # a read that began before the release went unverified proves nothing about it
    unloaded(c, "A", 3, unverified(3 * GiB))
    c.reconcile("caption", {}, 4, since=since)
    assert c.unverified.by_model == {"A": 3 * GiB}
    c.reconcile("asr", {}, 4.5)  # another family's worker
    assert c.unverified.by_model == {"A": 3 * GiB}
    c.reconcile("caption", None, 5)  # unreachable: nothing known
    assert c.unverified.by_model == {"A": 3 * GiB}
    c.reconcile("caption", {"K": Held(1 * GiB)}, 5.5)  # the worker lives on
    assert c.unverified.by_model == {"A": 3 * GiB}
    c.vanished("K", 5.6)
    c.reconcile("caption", {}, 6)
    assert c.unverified.by_model == {} and c.used_bytes() == 0


def test_a_model_the_service_still_holds_is_charged_as_resident_not_twice() -> None:
    c = core()
    resident(c, "A", 1, 3 * GiB)
    unloaded(c, "A", 2, unverified(0, used=None, unloaded=False, worker_stopped=False))
    c.reconcile("caption", {"A": Held(3 * GiB)}, 3)
    assert c.state_of("A") == "ready" and c.unverified.by_model == {} and c.used_bytes() == 3 * GiB
    # Found bigger than the room it left: unloaded at once, charged no more than before.
    unloaded(c, "A", 4, unverified(0, used=None, unloaded=False, worker_stopped=False))
    resident(c, "T", 5, 1 * GiB)
    acts = c.reconcile("caption", {"A": Held(GiB * 7 // 2)}, 6)
    assert Unload("A", UnloadReason.RECONCILE) in acts and c.unloading == {"A": 3 * GiB}
    c.check_invariants()


def test_a_ledger_correction_never_reads_as_memory_coming_back() -> None:
    c = core(budget=8 * GiB)
    resident(c, "A", 1, 3 * GiB)
    unloaded(c, "A", 2, unverified(3 * GiB, used=10 * GiB))  # baseline: 7 GiB outside the ledger
    c.reconcile("asr", {"T": Held(3 * GiB)}, 3)  # T was on the device all along; the ledger just learnt it
    c.rechecked(4, device_used_bytes=10 * GiB)  # the same reading: nothing came back
    assert c.unverified.by_model == {"A": 3 * GiB}
    c.rechecked(5, device_used_bytes=7 * GiB)  # now it did
    assert c.unverified.by_model == {}


def test_an_operator_can_let_unverified_bytes_go() -> None:
    c = core(budget=8 * GiB)
    for i, model in enumerate(("A", "K")):
        resident(c, model, 1 + i, 3 * GiB if model == "A" else 1 * GiB)
        unloaded(c, model, 2 + i, unverified(1, used=None))
    c.forget_unverified(5, "K")
    assert c.unverified.by_model == {"A": 3 * GiB}
    c.forget_unverified(6)
    assert c.unverified.by_model == {} and c.used_bytes() == 0


@st.composite
def zombie_scenarios(draw):
    names = "ABCD"[:draw(st.integers(2, 4))]
    models = {m: SimModel(footprint_bytes=draw(st.integers(1, 6)) * GiB, load_s=draw(st.floats(0.5, 3.0)),
                          unload_s=draw(st.floats(0.1, 1.0)), batch_s=draw(st.floats(0.01, 0.2)),
                          max_batch=draw(st.integers(1, 8)), zombie_s=draw(st.sampled_from([None, 0.01, 2.0, 60.0])),
                          fail_load=draw(st.booleans()) and draw(st.booleans()))
              for m in names}
    n = draw(st.integers(1, 100))
    times = sorted(draw(st.lists(st.floats(0, 60), min_size=n, max_size=n)))
    trace = [TraceRequest(t, draw(st.sampled_from(names)), draw(st.sampled_from([BULK, INTERACTIVE])),
                          timeout_s=draw(st.sampled_from([300.0, 20.0]))) for t in times]
    unloads = [TraceUnload(t, draw(st.sampled_from(names)), draw(st.booleans()))
               for t in draw(st.lists(st.floats(0, 60), max_size=6))]
    return models, trace, unloads


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zombie_scenarios())
def test_random_traces_with_zombie_workers_keep_the_budget_and_answer_everyone(scenario) -> None:
    models, trace, unloads = scenario
    budget = 10 * GiB
    res = sim.simulate_core(trace, models, budget, PolicyConfig(max_wait_s=30), unloads=unloads)  # invariants checked
    assert res.max_used_bytes <= budget and res.double_loads == 0
    for o in res.outcomes:
        assert (o.granted is not None) != (o.failed is not None), o  # answered exactly once, never left waiting
    assert {t: len(a) for t, a in res.unload_answers.items()} == {t: 1 for t in range(len(unloads))}


# A victim that is not released: a server that answers its unload and keeps the model ------------------------

MiB = 2**20


class LyingServerWorld:
    """A virtual-clock driver for one Core: an LLM tenant (150 MiB) whose server answers every unload and,
    while ``lying``, keeps the model (its list still shows it after release_timeout_s, 15 s); a face model
    (64 MiB) beside it in a 180 MiB budget. Re-reads, meter-less, as the driver's ``Recheck`` and the periodic
    reconciliation do (every 15 s). Records every Grant, Fail and Unload with its time."""

    def __init__(self) -> None:
        self.c = Core("cuda:0", 180 * MiB, {"llm": ModelInfo("llm", 150 * MiB, family="llm", load_s=1.0),
                                            "face": ModelInfo("face", 64 * MiB, family="face", load_s=1.0)},
                      config=PolicyConfig(idle_grace_s=0.5))
        self.lying = True
        self.held = {"llm": {"llm": Held(150 * MiB)}, "face": {}}  # what each server holds
        self.events: list[tuple[float, int, str, tuple]] = []  # (at, seq, what, args)
        self.seq = 0
        self.arrived: dict[int, float] = {}
        self.answers: dict[int, tuple[float, object]] = {}
        self.unloads: list[float] = []
        self.now = 0.0

    def at(self, t: float, what: str, *args) -> None:
        self.seq += 1
        self.events.append((t, self.seq, what, args))

    def apply(self, actions: list) -> None:
        self.c.check_invariants()
        for a in actions:
            if isinstance(a, (Grant, Fail)):
                assert a.req_id not in self.answers, f"request {a.req_id} answered twice"
                self.answers[a.req_id] = (self.now, a)
                if isinstance(a, Grant):
                    self.at(self.now + 0.1, "release", a.model)
            elif isinstance(a, Unload):
                self.unloads.append(self.now)
                self.at(self.now + (15.0 if self.lying else 0.2), "unloaded", a.model)
            elif isinstance(a, Load):
                self.at(self.now + 1.0, "loaded", a.model)
            elif isinstance(a, Recheck):
                self.at(self.now + 0.05, "recheck", a.families)
            elif type(a).__name__ == "Wake":
                self.at(a.at, "tick")

    def run_until(self, t_end: float) -> None:
        while True:
            self.events.sort()
            if not self.events or self.events[0][0] > t_end:
                self.now = t_end
                return
            self.now, _, what, args = self.events.pop(0)
            c, now = self.c, self.now
            if what == "arrive":
                self.arrived[args[0]] = now
                self.apply(c.arrive(args[0], args[1], now, lane=INTERACTIVE, timeout_s=120.0))
            elif what == "lying":
                self.lying = args[0]
            elif what == "release":
                self.apply(c.release(args[0], now))
            elif what == "tick":
                self.apply(c.tick(now))
            elif what == "loaded":
                self.held[c.models[args[0]].family][args[0]] = Held(c.models[args[0]].footprint_bytes)
                self.apply(c.load_done(args[0], now, ok=True, peak_memory_bytes=c.models[args[0]].footprint_bytes))
            elif what == "unloaded":
                model = args[0]
                if self.lying and model == "llm":
                    self.apply(c.unload_done(model, now, Released(0, False, 15.0, "service answered state unloading",
                                                                  unloaded=False)))
                else:
                    self.held[c.models[model].family].pop(model, None)
                    self.apply(c.unload_done(model, now, Released(0, True, 0.2, "gone", worker_stopped=True)))
            elif what in ("recheck", "reconcile"):
                since = c.epoch
                for family in args[0]:
                    self.apply(c.reconcile(family, dict(self.held[family]), now, since=since))
                if what == "recheck":
                    self.apply(c.rechecked(now, device_used_bytes=None))
                else:
                    self.at(now + 15.0, "reconcile", args[0])


def test_a_victim_its_server_did_not_release_is_not_evicted_again_for_the_same_request() -> None:
    """The bug: the server answered the LLM's unload and kept it. The release went unverified, the re-read
    found the LLM loaded and charged it again, and the Core planned the same swap for the same face request,
    every 15 s, until the request's deadline (120 s): a request that never got its answer in time. Now the
    request gets one eviction; when its victim is found held again, it is refused, transiently, naming
    what holds the device. The budget holds throughout (checked after every event)."""
    w = LyingServerWorld()
    w.at(0.0, "reconcile", ("face", "llm"))  # at start: the LLM is resident
    w.at(10.0, "arrive", 1, "face")
    w.run_until(60.0)

    assert 1 in w.answers, f"the face request still waits at 60 s; the LLM was asked to unload at {w.unloads}"
    t, answer = w.answers[1]
    assert isinstance(answer, Fail) and answer.kind is FailKind.MEMORY_UNVERIFIED, answer
    assert t <= 10.0 + 15.0 + 1.0  # one swap's time, not the deadline
    assert "llm did not release its memory" in answer.message and "llm 150 MiB" in answer.message
    assert w.unloads == [10.0]  # asked once for it, not every 15 s
    assert w.c.state_of("llm") == "ready" and w.c.unverified.by_model == {} and not w.c.queues["face"]

    # A new request gets its own try; the server lies again: refused again, in the same bound.
    w.at(60.0, "arrive", 2, "face")
    w.run_until(100.0)
    t, answer = w.answers[2]
    assert isinstance(answer, Fail) and answer.kind is FailKind.MEMORY_UNVERIFIED and t <= 60.0 + 16.0
    assert len(w.unloads) == 2

    # The server behaves again: the next request evicts the LLM and is served.
    w.lying = False
    w.at(100.0, "arrive", 3, "face")
    w.run_until(120.0)
    t, answer = w.answers[3]
    assert isinstance(answer, Grant) and t <= 102.0
    assert w.c.state_of("llm") == "unloaded" and w.c.state_of("face") == "ready" and w.c.used_bytes() == 64 * MiB


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 200), st.sampled_from(["face", "llm"])), min_size=1, max_size=30),
       st.lists(st.tuples(st.floats(0, 200), st.booleans()), max_size=6))
def test_random_traces_with_a_server_that_lies_now_and_then_answer_every_request_within_the_bound(arrivals, lies) -> None:
    """Face and chat requests at random times, the LLM's server lying about its unloads now and then:
    every request is answered exactly once, and none waits longer than max_wait_s (30 s) plus one swap
    (a 15 s release that is not verified, then a 1 s load): the starvation bound, invariant 5."""
    w = LyingServerWorld()
    w.lying = False
    w.at(0.0, "reconcile", ("face", "llm"))
    for t, lying in lies:
        w.at(t, "lying", lying)
    for i, (t, model) in enumerate(sorted(arrivals)):
        w.at(t, "arrive", i + 1, model)
    w.run_until(400.0)
    assert set(w.answers) == set(w.arrived), f"never answered: {set(w.arrived) - set(w.answers)}"
    for req_id, (t, answer) in w.answers.items():
        assert t - w.arrived[req_id] <= 30.0 + 15.0 + 1.0, (req_id, w.arrived[req_id], t, answer)
        if isinstance(answer, Fail):
            assert answer.kind is FailKind.MEMORY_UNVERIFIED, answer
