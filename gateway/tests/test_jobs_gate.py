"""The interactive gate: bulk calls wait while someone else's requests are in flight on their device,
and for a quiet spell after; a starvation guard lets one round through after a long hold."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.jobs.pacing import InteractiveGate

pytestmark = pytest.mark.unit


class FakeCoordinator:
    """The coordinator's public activity view: requests in flight or queued, per device."""

    def __init__(self, in_flight: int = 0, queued: int = 0) -> None:
        self.in_flight = in_flight
        self.queued = queued

    def requests_active(self, dev: str) -> int:
        return self.in_flight + self.queued if dev == "cpu" else 0


async def test_no_interactive_traffic_means_no_wait() -> None:
    gate = InteractiveGate(FakeCoordinator(), yield_s=5.0)
    await asyncio.wait_for(gate.clear("cpu"), 0.5)


async def test_its_own_requests_do_not_hold_it_back() -> None:
    gate = InteractiveGate(FakeCoordinator(in_flight=2, queued=1), yield_s=5.0)
    gate.mine["cpu"] = 3
    await asyncio.wait_for(gate.clear("cpu"), 0.5)


async def test_it_waits_while_others_are_in_flight_and_for_the_quiet_spell_after() -> None:
    coord = FakeCoordinator(in_flight=1)
    gate = InteractiveGate(coord, yield_s=0.2)
    waiter = asyncio.create_task(gate.clear("cpu"))
    await asyncio.sleep(0.3)
    assert not waiter.done() and gate.yielding("cpu")
    coord.in_flight = 0
    t0 = time.monotonic()
    await asyncio.wait_for(waiter, 1.0)
    assert time.monotonic() - t0 >= 0.15
    assert not gate.yielding("cpu")


async def test_waiting_interactive_requests_count_too() -> None:
    gate = InteractiveGate(FakeCoordinator(queued=1), yield_s=0.2)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(gate.clear("cpu"), 0.3)


async def test_after_the_longest_hold_one_round_goes_through() -> None:
    gate = InteractiveGate(FakeCoordinator(in_flight=1), yield_s=10.0, max_yield_s=0.3)
    waiters = [asyncio.create_task(gate.clear("cpu")) for _ in range(3)]
    done, _ = await asyncio.wait(waiters, timeout=1.0)
    assert len(done) == 3
    await asyncio.sleep(0.1)  # past the round's short opening
    with pytest.raises(asyncio.TimeoutError):  # and the next round waits again
        await asyncio.wait_for(gate.clear("cpu"), 0.1)


async def test_yield_disabled() -> None:
    gate = InteractiveGate(FakeCoordinator(in_flight=5), yield_s=None)
    await asyncio.wait_for(gate.clear("cpu"), 0.1)
