"""Dedup: the same content is computed once, shared by the callers in flight, and a cancel ends every
caller it reaches (the store is the real one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.jobs.dedup import Dedup
from gateway.jobs.store import AsyncStore

pytestmark = pytest.mark.unit


@pytest.fixture
async def dedup(tmp_path: Path):
    store = AsyncStore(tmp_path / "jobs.sqlite3")
    yield Dedup(store)
    store.close()


async def test_callers_in_flight_share_one_computation(dedup: Dedup) -> None:
    release = asyncio.Event()
    runs = 0

    async def compute() -> dict:
        nonlocal runs
        runs += 1
        await release.wait()
        return {"caption": "x"}

    callers = [asyncio.create_task(dedup.once("k", compute)) for _ in range(3)]
    await asyncio.sleep(0.05)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*callers), 5)
    assert runs == 1 and sorted(reused for _, reused in results) == [False, True, True]


async def test_a_waiter_whose_owner_was_cancelled_computes_it_itself(dedup: Dedup) -> None:
    never = asyncio.Event()
    owner = asyncio.create_task(dedup.once("k", never.wait))
    await asyncio.sleep(0.02)

    async def quick() -> str:
        return "done"
    waiter = asyncio.create_task(dedup.once("k", quick))
    await asyncio.sleep(0.02)
    owner.cancel()
    assert await asyncio.wait_for(waiter, 5) == ("done", False)


async def test_one_cancel_reaching_owner_and_waiter_ends_both(dedup: Dedup) -> None:
    never = asyncio.Event()
    owner = asyncio.create_task(dedup.once("k", never.wait))
    await asyncio.sleep(0.02)
    waiter = asyncio.create_task(dedup.once("k", never.wait))
    await asyncio.sleep(0.02)
    owner.cancel()  # as a job's cancel does to its workers: every one, then wait for them
    waiter.cancel()
    done, pending = await asyncio.wait([owner, waiter], timeout=2)
    assert not pending, "a cancelled waiter went on computing"
    assert owner.cancelled() and waiter.cancelled()
