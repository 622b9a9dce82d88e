"""The coordinator's driver (``loop.Coordinator``) in-process: the real Core and run loop, a recording
fake of the effects whose loads and unloads finish only when the test says so, and a virtual clock.
Nothing sleeps: each step waits for a condition, polled against a deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from gateway.coordinator.actions import FailKind
from gateway.coordinator.effects import Loaded, Released
from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.loop import FAIL_ERRORS, Coordinator
from gateway.coordinator.policy import PolicyConfig
from modelhost.catalog import Catalog, ModelSpec
from modelhost.contract import ModelRow
from modelhost.errors import (
    InsufficientMemory,
    ModelLeased,
    ModelLoadFailed,
    ModelNotReady,
    Overloaded,
    RoundhouseError,
    ServiceUnreachable,
)

pytestmark = pytest.mark.unit

MiB = 2**20


class Clock:
    """Virtual time: moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingEffects:
    """Every call is recorded in ``calls``; a load or an unload then waits until the test completes it
    (``finish``) with a result or an exception. ``rows`` is what ``models(family)`` answers, ``used``
    what ``device_used(device)`` does (None: not metered), ``totals`` what ``device_total(device)`` does;
    an exception in either is raised by the read (a lost GPU)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.charged: dict[str, int] = {}  # model -> the charge its last unload was asked to release
        self.pending: dict[tuple[str, str], asyncio.Future] = {}
        self.rows: dict[str, list[ModelRow] | RoundhouseError] = {}
        self.used: dict[str, int | None] = {}
        self.totals: dict[str, int | None | Exception] = {}

    async def _wait(self, kind: str, model: str) -> Any:
        self.calls.append((kind, model))
        fut = asyncio.get_running_loop().create_future()
        self.pending[(kind, model)] = fut
        return await fut

    async def load(self, spec: ModelSpec) -> Loaded:
        return await self._wait("load", spec.id)

    async def unload(self, spec: ModelSpec, charged_bytes: int) -> Released:
        self.charged[spec.id] = charged_bytes
        return await self._wait("unload", spec.id)

    async def models(self, family: str) -> list[ModelRow]:
        self.calls.append(("models", family))
        rows = self.rows.get(family, [])
        if isinstance(rows, RoundhouseError):
            raise rows
        return rows

    def device_used(self, device: str) -> int | None:
        self.calls.append(("meter", device))
        return self.used.get(device)

    def device_total(self, device: str) -> int | None:
        total = self.totals.get(device)
        if isinstance(total, Exception):
            raise total
        return total

    def count(self, kind: str, model: str) -> int:
        return self.calls.count((kind, model))

    async def finish(self, kind: str, model: str, result: Any) -> None:
        """Complete the (next) ``kind`` call for ``model`` once it is made: a value, or an exception to raise."""
        await until(lambda: (kind, model) in self.pending, f"a {kind} of {model}")
        fut = self.pending.pop((kind, model))
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)


async def until(cond: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        await asyncio.sleep(0.001)


def spec(model: str, mb: int, family: str = "caption") -> ModelSpec:
    return ModelSpec(id=model, family=family, backend="blip", source=f"./{model}", memory_estimate_mb=mb)


def row(model: str, state: str, peak_mb: int | None = None, family: str = "caption") -> ModelRow:
    return ModelRow(id=model, family=family, backend="blip", state=state, device_requested="cpu", device="cpu",
                    peak_memory_bytes=None if peak_mb is None else peak_mb * MiB, memory_estimate_bytes=100 * MiB)


def released(mb: int, *, verified: bool = True, used_mb: int | None = None) -> Released:
    return Released(freed_bytes=mb * MiB, verified=verified, seconds=0.25, detail="test release", worker_stopped=True,
                    returned_bytes=None if verified else 0, device_used_bytes=None if used_mb is None else used_mb * MiB)


def loaded(mb: int) -> Loaded:
    return Loaded(peak_memory_bytes=mb * MiB, load_s=0.5, device="cpu")


class World:
    def __init__(self, coordinator: Coordinator, effects: RecordingEffects, clock: Clock) -> None:
        self.c = coordinator
        self.effects = effects
        self.clock = clock

    def cpu(self):  # noqa: ANN201 - the cpu ledger view
        return self.c.view()["cpu"]

    def start(self, model: str, **kwargs: Any) -> asyncio.Task:
        """A request for ``model``: its task ends when it is granted (or fails)."""
        return asyncio.create_task(self.c.acquire(model, timeout_s=kwargs.pop("timeout_s", 60.0), **kwargs))

    async def granted(self, model: str, peak_mb: int) -> None:
        """``model`` loaded and one request holding it."""
        task = self.start(model)
        await self.effects.finish("load", model, loaded(peak_mb))
        await asyncio.wait_for(task, 5)


@pytest.fixture()
async def world(tmp_path: Path) -> AsyncIterator[World]:
    catalog = Catalog(models=[spec("A", 400), spec("B", 300), spec("T", 200, family="asr"), spec("X", 5000)])
    effects = RecordingEffects()
    clock = Clock()
    c = Coordinator(catalog, effects, {"cpu": 1000 * MiB}, FootprintStore(tmp_path / "footprints.json"),
                    config=PolicyConfig(), max_queue=3, clock=clock)
    yield World(c, effects, clock)
    await c.close()


async def test_a_request_is_granted_once_its_model_is_loaded(world: World) -> None:
    task = world.start("A")
    await until(lambda: world.effects.count("load", "A") == 1, "load")
    assert not task.done() and world.cpu().loading == "A" and world.cpu().used_bytes == 400 * MiB  # the estimate
    await world.effects.finish("load", "A", loaded(350))
    await asyncio.wait_for(task, 5)
    cpu = world.cpu()
    assert cpu.resident["A"].in_flight == 1 and cpu.resident["A"].charged_bytes == 350 * MiB  # the measurement
    assert cpu.footprints["A"].measured and world.c.store.get("A")["peak_memory_bytes"] == 350 * MiB


async def test_two_requests_for_a_cold_model_make_one_load(world: World) -> None:
    first, second = world.start("A"), world.start("A")
    await world.effects.finish("load", "A", loaded(350))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert world.effects.count("load", "A") == 1
    assert world.cpu().resident["A"].in_flight == 2


async def test_admin_unload_drains_then_charges_the_model_as_unloading_until_its_release_is_verified(world: World) -> None:
    await world.granted("A", 350)  # one request in flight
    unload = asyncio.create_task(world.c.unload("A", drain=True, timeout_s=30))
    await until(lambda: world.c.model_state("A").ledger_state == "draining", "drain")
    assert world.effects.count("unload", "A") == 0 and not unload.done()  # the request in flight finishes first

    world.c.release("A")
    await until(lambda: world.effects.count("unload", "A") == 1, "unload")
    cpu = world.cpu()
    assert cpu.unloading == {"A": 350 * MiB} and cpu.used_bytes == 350 * MiB and "A" not in cpu.resident
    assert world.effects.charged["A"] == 350 * MiB and not unload.done()  # answered only once released

    await world.effects.finish("unload", "A", released(350))
    answer = await asyncio.wait_for(unload, 5)
    assert answer == released(350) and answer.verified
    cpu = world.cpu()
    assert cpu.unloading == {} and cpu.used_bytes == 0 and world.c.model_state("A").ledger_state == "unloaded"


async def test_admin_unload_without_drain_of_a_model_in_use_is_409_and_changes_nothing(world: World) -> None:
    await world.granted("A", 350)
    with pytest.raises(ModelLeased) as info:
        await world.c.unload("A", drain=False, timeout_s=30)
    assert info.value.status == 409 and info.value.code == "model_in_use"
    assert world.c.model_state("A").ledger_state == "ready" and world.effects.count("unload", "A") == 0
    await asyncio.wait_for(world.start("A"), 5)  # still serving


async def test_admin_unload_of_a_model_not_resident_answers_at_once(world: World) -> None:
    assert await asyncio.wait_for(world.c.unload("B", drain=False, timeout_s=30), 1) is None
    assert world.effects.calls == []


async def test_requests_waiting_for_a_model_being_unloaded_stay_queued_and_bring_it_back(world: World) -> None:
    await world.granted("A", 350)
    unload = asyncio.create_task(world.c.unload("A", drain=True, timeout_s=30))
    await until(lambda: world.c.model_state("A").ledger_state == "draining", "drain")
    waiting = world.start("A")
    await until(lambda: world.c.model_state("A").queue_depth == 1, "a queued request")
    world.c.release("A")
    await world.effects.finish("unload", "A", released(350))
    await asyncio.wait_for(unload, 5)
    await world.effects.finish("load", "A", loaded(350))  # it comes back for the request that waited
    await asyncio.wait_for(waiting, 5)
    assert world.effects.count("load", "A") == 2


async def test_a_failed_unload_answers_the_operator_with_its_error_and_reads_the_service(world: World) -> None:
    await world.granted("A", 350)
    world.c.release("A")
    unload = asyncio.create_task(world.c.unload("A", drain=False, timeout_s=30))
    world.effects.rows["caption"] = ServiceUnreachable("caption-svc refused the connection")
    await world.effects.finish("unload", "A", ServiceUnreachable("caption-svc refused the connection"))
    with pytest.raises(ServiceUnreachable):
        await asyncio.wait_for(unload, 5)
    assert world.effects.count("models", "caption") == 1 and world.c.unverified_releases == 1
    # Nobody knows what the service still holds: the charge stays, unverified, until it can be read.
    assert world.cpu().used_bytes == 350 * MiB and world.cpu().unverified == {"A": 350 * MiB}
    world.effects.rows["caption"] = []  # back, holding nothing: its worker is gone
    await world.c.reconcile_all()
    assert world.cpu().used_bytes == 0 and world.cpu().unverified == {}


async def test_reconcile_hands_the_services_rows_to_the_core(world: World) -> None:
    await world.granted("A", 350)
    world.c.release("A")
    await world.granted("T", 150)  # another family: untouched by caption's reconcile
    world.effects.rows["caption"] = [row("A", "unloaded"), row("B", "ready", peak_mb=123)]
    await world.c.reconcile("caption")
    assert world.c.model_state("A").ledger_state == "unloaded"  # gone at its service
    b = world.c.model_state("B")
    assert b.ledger_state == "ready" and b.charged_bytes == world.effects.rows["caption"][1].peak_memory_bytes
    assert world.c.model_state("T").ledger_state == "ready"

    world.effects.rows["caption"] = ServiceUnreachable("caption-svc refused the connection")
    await world.c.reconcile("caption")  # a service that is down holds nothing
    assert set(world.cpu().resident) == {"T"}


async def test_reconcile_leaves_a_model_alone_while_the_service_still_loads_it(world: World) -> None:
    world.effects.rows["caption"] = [row("B", "loading")]
    await world.c.reconcile("caption")
    assert world.c.model_state("B").ledger_state == "unloaded" and world.cpu().used_bytes == 0


async def test_a_failed_load_fails_its_waiters_with_the_mapped_error(world: World) -> None:
    first, second = world.start("A"), world.start("A")
    await world.effects.finish("load", "A", RuntimeError("weights are corrupt"))
    for task in (first, second):
        with pytest.raises(ModelLoadFailed) as info:
            await asyncio.wait_for(task, 5)
        assert info.value.status == 500 and info.value.code == "model_load_failed"
    # A service that is down: its waiters get that (503), not a 500, and the service is read again.
    third = world.start("A")
    await world.effects.finish("load", "A", ServiceUnreachable("caption-svc refused the connection"))
    with pytest.raises(ServiceUnreachable):
        await asyncio.wait_for(third, 5)
    await until(lambda: world.effects.count("models", "caption") == 1, "a reconcile")


async def test_refusals_reach_the_caller_as_their_mapped_errors(world: World) -> None:
    with pytest.raises(InsufficientMemory):  # 5000 MiB on a 1000 MiB budget
        await world.c.acquire("X", timeout_s=5)
    waiting = [world.start("A") for _ in range(3)]  # max_queue 3
    with pytest.raises(Overloaded) as info:
        await asyncio.wait_for(world.start("A"), 5)
    assert info.value.status == 429 and info.value.retry_after_s == 2.0
    await world.effects.finish("load", "A", loaded(350))
    await asyncio.wait_for(asyncio.gather(*waiting), 5)


def test_every_failure_kind_maps_to_exactly_one_error() -> None:
    assert set(FAIL_ERRORS) == set(FailKind)
    assert {kind: cls.status for kind, (cls, _) in FAIL_ERRORS.items()} == {
        FailKind.QUEUE_FULL: 429, FailKind.NOT_READY_IN_TIME: 503, FailKind.TOO_LARGE: 503,
        FailKind.LOAD_FAILED: 500, FailKind.DEADLINE: 504, FailKind.MEMORY_UNVERIFIED: 503,
        FailKind.FOREIGN_MEMORY: 503, FailKind.OUT_OF_MEMORY: 503}
    for transient in (FailKind.MEMORY_UNVERIFIED, FailKind.FOREIGN_MEMORY):  # a bulk job pauses, not fails
        assert FAIL_ERRORS[transient][0].retryable and FAIL_ERRORS[transient][0].code == "model_not_ready"
    cls, retry_after_s = FAIL_ERRORS[FailKind.OUT_OF_MEMORY]
    assert cls.code == "insufficient_memory" and retry_after_s is not None  # said when to come back


async def test_a_caller_that_goes_away_while_waiting_leaves_the_queue(world: World) -> None:
    staying, leaving = world.start("A"), world.start("A")
    await until(lambda: world.c.model_state("A").queue_depth == 2, "two queued requests")
    leaving.cancel()
    await until(lambda: world.c.model_state("A").queue_depth == 1, "the cancelled request gone")
    await world.effects.finish("load", "A", loaded(350))
    await asyncio.wait_for(staying, 5)
    assert leaving.cancelled() and world.cpu().resident["A"].in_flight == 1  # no lease left behind



@pytest.mark.parametrize("rounds", [0, 1, 2, 3, 4])
async def test_a_caller_cancelled_just_as_it_is_granted_ends_cancelled_and_hands_its_grant_back(world: World,
                                                                                                  rounds: int) -> None:
    # Python 3.11's asyncio.wait_for returned the result when the cancel came within a few rounds of the event
    # loop after the grant: the caller went on as if never cancelled (a job's worker that its cancel never
    # stopped, so the next job never started). The cancel must win, and the grant go back to the Core.
    task = world.start("A")
    await world.effects.finish("load", "A", loaded(350))
    for _ in range(10_000):  # round by round, so the cancel lands right after the grant
        a = world.cpu().resident.get("A")
        if a is not None and a.in_flight == 1:
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("A was never granted")
    for _ in range(rounds):
        await asyncio.sleep(0)
    if not task.cancel():  # it had already returned: the request holds A
        assert task.done() and task.exception() is None and world.cpu().resident["A"].in_flight == 1
        return
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.cpu().resident["A"].in_flight == 0  # no lease left behind


# Releases no one verified --------------------------------------------------------------------------


async def unverified_a(world: World, mb: int = 800, used_mb: int | None = None) -> None:
    """A loaded with ``mb`` and unloaded by an operator; its release not verified."""
    await world.granted("A", mb)
    world.c.release("A")
    unload = asyncio.create_task(world.c.unload("A", drain=True, timeout_s=30))
    await world.effects.finish("unload", "A", released(mb, verified=False, used_mb=used_mb))
    assert not (await asyncio.wait_for(unload, 5)).verified
    assert world.cpu().unverified == {"A": mb * MiB} and world.cpu().used_bytes == mb * MiB


async def test_a_request_kept_out_by_unverified_bytes_rereads_the_truth_then_is_refused_503(world: World) -> None:
    await unverified_a(world)
    world.effects.rows["caption"] = [row("A", "unloaded"), row("B", "loading")]  # its worker lives on
    with pytest.raises(ModelNotReady) as info:  # B (300 MiB) fits the budget, not beside 800 MiB unverified
        await asyncio.wait_for(world.c.acquire("B", timeout_s=60), 5)
    assert info.value.status == 503 and info.value.retry_after_s == 15.0
    assert world.effects.count("models", "caption") == 1 and world.effects.count("meter", "cpu") == 1
    assert world.effects.count("load", "B") == 0 and world.cpu().unverified == {"A": 800 * MiB}


async def test_a_request_kept_out_by_unverified_bytes_is_served_once_the_reread_finds_the_worker_gone(world: World) -> None:
    await unverified_a(world)
    world.effects.rows["caption"] = [row("A", "unloaded"), row("B", "unloaded")]
    task = world.start("B")
    await world.effects.finish("load", "B", loaded(300))
    await asyncio.wait_for(task, 5)
    assert world.cpu().unverified == {} and world.cpu().used_bytes == 300 * MiB


async def test_the_periodic_reconcile_lets_unverified_bytes_go_once_the_meter_shows_them_back(world: World) -> None:
    await unverified_a(world, used_mb=5000)  # the meter read 5000 MiB when the release was given up on
    world.effects.rows["caption"] = ServiceUnreachable("caption-svc refused the connection")  # no word from it
    world.effects.used["cpu"] = 5000 * MiB
    await world.c.reconcile_all()
    assert world.cpu().unverified == {"A": 800 * MiB}
    world.effects.used["cpu"] = 4300 * MiB  # 700 of the 800 MiB back: more than 80 %
    await world.c.reconcile_all()
    assert world.cpu().unverified == {} and world.cpu().used_bytes == 0


async def test_an_operator_can_let_unverified_bytes_go(world: World) -> None:
    await unverified_a(world)
    assert world.c.forget_unverified("cpu", "B") == 0
    assert world.c.forget_unverified("cpu") == 800 * MiB
    assert world.cpu().used_bytes == 0
