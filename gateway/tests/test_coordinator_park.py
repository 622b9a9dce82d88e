"""The parked tier in the coordinator (``gateway.coordinator.parking``): the Core parks a victim its service can
park, keeps charging what a parked model still holds, un-parks it with its next load and learns the un-park's time
apart from the load's; it unloads where the service cannot park, where an operator asked for an unload, and past
the host-memory cap. Driven as the gateway drives it: events in, actions out, under a virtual clock."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from gateway.coordinator import parking, sim
from gateway.coordinator.core import Core, Fail, FailKind, Grant, Load, Released, Unload, UnloadReason
from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.policy import ModelInfo, PolicyConfig
from modelhost.contract import ModelRow

pytestmark = pytest.mark.unit

GiB, MiB = 2**30, 2**20


def core(config: PolicyConfig | None = None, **parkable: bool) -> Core:
    """A 6 GiB budget and 4 GiB models: B can come in only if A goes."""
    models = {m: ModelInfo(m, 4 * GiB, family="caption", parkable=p, load_s=6.0) for m, p in parkable.items()}
    return Core("cuda:0", 6 * GiB, models, config=config or PolicyConfig(bulk_patience_s=0.0, idle_grace_s=0.0))


def serve_once(c: Core, model: str, now: float, req_id: int) -> list:
    acts = c.arrive(req_id, model, now)
    if Load(model) in acts:
        acts = c.load_done(model, now + 1, ok=True, peak_memory_bytes=4 * GiB, load_s=6.0)
    assert Grant(req_id, model) in acts
    return c.release(model, now + 2)


def evict_a_for_b(c: Core) -> Unload:
    serve_once(c, "A", 0.0, req_id=1)
    [unload] = [a for a in c.arrive(2, "B", 10.0) if isinstance(a, Unload)]
    return unload


def test_a_victim_its_service_can_park_is_parked_and_what_it_still_holds_stays_charged() -> None:
    c = core(A=True, B=False)
    unload = evict_a_for_b(c)
    assert unload == Unload("A", UnloadReason.SWAP, park=True)
    parked = Released(4 * GiB - 300 * MiB, True, 0.2, "NVML", parked=True, held_bytes=300 * MiB, host_bytes=4 * GiB)
    acts = c.unload_done("A", 10.5, parked)
    assert Load("B") in acts
    assert c.state_of("A") == "parked" and c.models["A"].parked_bytes == 300 * MiB
    assert c.used_bytes() == 4 * GiB + 300 * MiB  # B loading, and the context A's worker keeps
    c.check_invariants()


def test_a_parked_model_is_unparked_by_its_next_load_and_its_unpark_time_is_learnt_apart() -> None:
    c = core(A=True, B=False)
    evict_a_for_b(c)
    c.unload_done("A", 10.5, Released(4 * GiB, True, 0.2, "host", parked=True, host_bytes=4 * GiB))
    assert c.used_bytes() == 4 * GiB  # on the host a parked model holds no device memory
    c.load_done("B", 11.0, ok=True, peak_memory_bytes=4 * GiB, load_s=6.0)
    c.release("B", 12.0)
    acts = c.arrive(3, "A", 20.0)
    [unload] = [a for a in acts if isinstance(a, Unload)]
    assert unload == Unload("B", UnloadReason.SWAP, park=False)  # B's service cannot park it
    acts = c.unload_done("B", 20.5, Released(4 * GiB, True, 0.2, "host", worker_stopped=False))
    assert Load("A") in acts
    acts = c.load_done("A", 20.8, ok=True, peak_memory_bytes=4 * GiB, load_s=0.3, unparked=True)
    assert Grant(3, "A") in acts
    info = c.models["A"]
    assert info.unpark_s == 0.3 and info.load_s == 6.0  # the load's time is kept for a load from disk
    assert info.parked_bytes is None and c.state_of("A") == "ready"


def test_the_unpark_time_is_what_a_parked_model_promises_a_deadline() -> None:
    c = core(A=True, B=False)
    c.models["A"].unpark_s = 0.3
    evict_a_for_b(c)
    c.unload_done("A", 10.5, Released(4 * GiB, True, 0.2, "host", parked=True))
    assert c.models["A"].swap_in_s == 0.3
    acts = c.arrive(3, "A", 11.0, timeout_s=2.0)  # a load from disk (6 s) would not make it
    assert not [a for a in acts if isinstance(a, Fail) and a.kind is FailKind.NOT_READY_IN_TIME]
    cold = core(A=True)
    cold.models["A"].unpark_s = 0.3  # known, but A is not parked: a load from disk
    assert [a.kind for a in cold.arrive(1, "A", 0.0, timeout_s=2.0) if isinstance(a, Fail)] == [FailKind.NOT_READY_IN_TIME]


def test_an_operator_unload_is_never_a_park() -> None:
    c = core(A=True)
    serve_once(c, "A", 0.0, req_id=1)
    [unload] = [a for a in c.request_unload(1, "A", 5.0) if isinstance(a, Unload)]
    assert unload == Unload("A", UnloadReason.REQUEST, park=False)


def test_past_the_host_memory_cap_a_victim_is_unloaded() -> None:
    c = core(PolicyConfig(bulk_patience_s=0.0, idle_grace_s=0.0, park_host_bytes=6 * GiB), A=True, B=True, C=True)
    c.models["C"].parked_bytes, c.models["C"].parked_host_bytes = 0, 4 * GiB  # C is parked already
    assert parking.choose(c, "A", UnloadReason.SWAP) is False
    c.models["C"].parked_bytes = c.models["C"].parked_host_bytes = None
    assert parking.choose(c, "A", UnloadReason.SWAP) is True


def test_a_park_the_service_turned_into_an_unload_leaves_nothing_parked() -> None:
    c = core(A=True, B=False)
    evict_a_for_b(c)
    c.unload_done("A", 10.5, Released(4 * GiB, True, 0.2, "host", worker_stopped=True))  # over the service's cap
    assert c.state_of("A") == "unloaded" and c.used_bytes() == 4 * GiB


def test_the_service_rows_say_which_models_park_and_which_are_parked() -> None:
    models = {m: ModelInfo(m, GiB, family="caption") for m in ("A", "B")}
    row = dict(family="caption", backend="blip", device_requested="cuda:0", memory_estimate_bytes=GiB)
    parking.seen(models, [ModelRow(id="A", state="parked", parkable=True, memory_bytes=0, host_memory_bytes=GiB, **row),
                          ModelRow(id="B", state="ready", parkable=False, **row)])
    assert models["A"].parkable and models["A"].parked_bytes == 0 and models["A"].parked_host_bytes == GiB
    assert not models["B"].parkable and models["B"].parked_bytes is None
    parking.seen(models, [ModelRow(id="A", state="unloaded", **row)])  # its worker ended meanwhile
    assert models["A"].parked_bytes is None and models["A"].parkable  # unknown stays as last known


def test_unpark_times_are_remembered_with_the_footprints(tmp_path: Path) -> None:
    store = FootprintStore(tmp_path / "footprints.json")
    store.record("A", peak_memory_bytes=GiB, load_s=6.0, device="cuda:0")
    store.record_unpark("A", 0.3)
    again = FootprintStore(tmp_path / "footprints.json")
    assert again.unpark_s("A") == 0.3 and again.get("A")["load_s"] == 6.0
    assert again.unpark_s("B") is None


def test_in_the_simulator_a_family_that_parks_swaps_in_its_unpark_time() -> None:
    # Two caption models that do not fit together, interleaved: every swap-in after the first of each is an
    # un-park (0.25 s) where the family parks, a load from disk (6 s) where it does not.
    trace = [sim.TraceRequest(at=i * 2.0, model="A" if i % 2 == 0 else "B") for i in range(20)]

    def run(unpark_s: float | None) -> sim.SimResult:
        models = {m: sim.SimModel(4 * GiB, load_s=6.0, unload_s=0.1, family="caption", unpark_s=unpark_s) for m in "AB"}
        return sim.simulate_core(trace, models, 6 * GiB, PolicyConfig(bulk_patience_s=0.0, idle_grace_s=0.0))

    parked, unloaded = run(0.25), run(None)
    assert not parked.double_loads and not [o for o in parked.outcomes if o.failed]
    loads_s = parked.swap_s - 2 * 6.0  # two loads from disk, then only un-parks (and parks, 0.1 s each)
    assert loads_s <= (parked.swaps - 2) * (0.25 + 0.1) + (parked.swaps - 1) * 0.1 + 1e-6
    assert unloaded.swap_s >= unloaded.swaps * 6.0
    # Once both were loaded once, each request waits one park and one un-park (0.35 s); unloaded, up to 11 s.
    assert max(parked.waits()[8:]) <= 0.1 + 0.25 + 1e-6
    assert statistics.fmean(unloaded.waits()[8:]) > 6.0
