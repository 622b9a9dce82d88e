"""Dynamic batching: gathering, the idle wait, the queue bound, cancelled callers, per-item errors, close."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pytest

from modelhost.batching import Batcher
from modelhost.errors import Overloaded, Unavailable

pytestmark = pytest.mark.unit

DEADLINE_S = 5.0


class Recorder:
    """A run_batch that records its batches, doubles numbers, and can be held at a gate."""

    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.running = 0

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.running += 1
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
        return [ValueError(f"cannot double {i!r}") if i == "bad" else i * 2 for i in items]


@pytest.fixture
async def make_batcher():
    made: list[Batcher] = []

    def make(run_batch: Callable[[list[Any]], Awaitable[list[Any]]], **kw: Any) -> Batcher:
        kw = {"max_batch": 4, "max_wait_ms": 20.0, "max_queue": 100, **kw}
        b = Batcher("m", run_batch, **kw)
        b.start()
        made.append(b)
        return b

    yield make
    for b in made:
        await asyncio.wait_for(b.close(), DEADLINE_S)


async def test_concurrent_submits_are_gathered_up_to_max_batch(make_batcher) -> None:
    rec = Recorder()
    b = make_batcher(rec, max_batch=4, max_wait_ms=50)
    results = await asyncio.gather(*(b.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]  # each caller gets its own item's result
    assert [len(batch) for batch in rec.batches] == [4, 4, 2]
    assert sorted(i for batch in rec.batches for i in batch) == list(range(10))


async def test_items_arriving_while_a_batch_runs_form_the_next_batch(make_batcher, wait_until) -> None:
    rec = Recorder(gated=True)
    b = make_batcher(rec, max_batch=8, max_wait_ms=0)
    first = asyncio.create_task(b.submit(0))
    await wait_until(lambda: rec.running == 1, "the first batch runs")
    rest = [asyncio.create_task(b.submit(i)) for i in range(1, 6)]
    await wait_until(lambda: b.depth == 5, "five items wait")
    assert len(rec.batches) == 1  # one batch per model in flight
    rec.gate.set()
    assert await asyncio.gather(first, *rest) == [0, 2, 4, 6, 8, 10]
    assert rec.batches == [[0], [1, 2, 3, 4, 5]]


async def test_idle_single_item_is_dispatched_after_max_wait(make_batcher) -> None:
    rec = Recorder()
    b = make_batcher(rec, max_batch=8, max_wait_ms=100)
    t0 = time.monotonic()
    assert await b.submit(21) == 42
    elapsed = time.monotonic() - t0
    assert rec.batches == [[21]]
    assert 0.09 <= elapsed < 1.0, f"dispatched after {elapsed:.3f} s, expected about 0.1 s"


async def test_full_batch_does_not_wait_for_max_wait(make_batcher) -> None:
    rec = Recorder()
    b = make_batcher(rec, max_batch=4, max_wait_ms=5_000)
    t0 = time.monotonic()
    assert await asyncio.gather(*(b.submit(i) for i in range(4))) == [0, 2, 4, 6]
    assert time.monotonic() - t0 < 2.0


async def test_queue_bound_gives_overloaded(make_batcher, wait_until) -> None:
    rec = Recorder(gated=True)
    b = make_batcher(rec, max_batch=1, max_wait_ms=0, max_queue=2)
    in_flight = asyncio.create_task(b.submit(1))
    await wait_until(lambda: rec.running == 1, "the first batch runs")
    waiting = [asyncio.create_task(b.submit(i)) for i in (2, 3)]
    await wait_until(lambda: b.depth == 2, "two items wait")
    with pytest.raises(Overloaded) as info:
        await b.submit(4)
    assert info.value.status == 429
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    rec.gate.set()
    assert await asyncio.gather(in_flight, *waiting) == [2, 4, 6]
    assert rec.batches == [[1], [2], [3]]  # the refused item never ran


async def test_cancelled_callers_item_is_dropped(make_batcher, wait_until) -> None:
    rec = Recorder(gated=True)
    b = make_batcher(rec, max_batch=8, max_wait_ms=0)
    first = asyncio.create_task(b.submit(1))
    await wait_until(lambda: rec.running == 1, "the first batch runs")
    gone = asyncio.create_task(b.submit(2))
    kept = asyncio.create_task(b.submit(3))
    await wait_until(lambda: b.depth == 2, "two items wait")
    gone.cancel()
    rec.gate.set()
    assert await first == 2
    assert await kept == 6
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert rec.batches == [[1], [3]]


async def test_per_item_exception_reaches_only_its_caller(make_batcher) -> None:
    rec = Recorder()
    b = make_batcher(rec, max_batch=4, max_wait_ms=50)
    results = await asyncio.gather(b.submit(1), b.submit("bad"), b.submit(3), return_exceptions=True)
    assert rec.batches == [[1, "bad", 3]]
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], ValueError) and "bad" in str(results[1])


async def test_whole_batch_failure_reaches_every_caller_of_that_batch(make_batcher) -> None:
    async def broken(items: list[Any]) -> list[Any]:
        raise RuntimeError("the worker is gone")

    b = make_batcher(broken, max_batch=4, max_wait_ms=50)
    results = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    # ...and the collector keeps going afterwards.
    assert isinstance((await asyncio.gather(b.submit(9), return_exceptions=True))[0], RuntimeError)


async def test_on_batch_reports_size_and_duration(make_batcher) -> None:
    seen: list[tuple[int, float]] = []
    b = make_batcher(Recorder(), max_batch=4, max_wait_ms=50, on_batch=lambda n, s: seen.append((n, s)))
    await asyncio.gather(*(b.submit(i) for i in range(3)))
    assert len(seen) == 1 and seen[0][0] == 3 and seen[0][1] >= 0


async def test_close_fails_waiting_and_in_flight_items_with_unavailable(make_batcher, wait_until) -> None:
    rec = Recorder(gated=True)
    b = make_batcher(rec, max_batch=1, max_wait_ms=0)
    in_flight = asyncio.create_task(b.submit(1))
    await wait_until(lambda: rec.running == 1, "the first batch runs")
    waiting = [asyncio.create_task(b.submit(i)) for i in (2, 3)]
    await wait_until(lambda: b.depth == 2, "two items wait")
    await asyncio.wait_for(b.close(), DEADLINE_S)
    for task in [in_flight, *waiting]:
        with pytest.raises(Unavailable) as info:
            await task
        assert info.value.status == 503
    assert rec.batches == [[1]]  # the waiting items never ran
    with pytest.raises(Unavailable):
        await b.submit(4)  # a closed batcher takes nothing new


async def test_close_with_an_error_fails_every_item_with_that_error(make_batcher, wait_until) -> None:
    rec = Recorder(gated=True)
    b = make_batcher(rec, max_batch=1, max_wait_ms=0)
    in_flight = asyncio.create_task(b.submit(1))
    await wait_until(lambda: rec.running == 1, "the first batch runs")
    waiting = asyncio.create_task(b.submit(2))
    await wait_until(lambda: b.depth == 1, "one item waits")
    died = Unavailable("the worker died; retry", code="worker_died")
    await asyncio.wait_for(b.close(died), DEADLINE_S)
    for task in (in_flight, waiting):
        with pytest.raises(Unavailable) as info:
            await task
        assert info.value.code == "worker_died"


async def test_close_returns_when_the_in_flight_batch_ends_as_it_is_cancelled(make_batcher) -> None:
    # The worker dies: its reply future fails in the same loop step in which close() cancels the
    # collector. asyncio.wait_for then returns the reply's outcome and swallows the cancellation;
    # close() must still return (it is awaited by unload) and the collector must end.
    loop = asyncio.get_running_loop()
    reply = loop.create_future()
    started = asyncio.Event()

    async def run_batch(items: list[Any]) -> list[Any]:
        started.set()
        return await asyncio.wait_for(asyncio.shield(reply), 30)

    b = make_batcher(run_batch, max_batch=1, max_wait_ms=0)
    caller = asyncio.create_task(b.submit(1))
    await asyncio.wait_for(started.wait(), DEADLINE_S)
    reply.set_exception(RuntimeError("worker process exited (code 3)"))
    closing = asyncio.ensure_future(b.close())
    done, _ = await asyncio.wait({closing}, timeout=DEADLINE_S)
    assert closing in done, "close() did not return"
    with pytest.raises(Exception):
        await caller
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "batcher-m"], "the collector task is still alive"
