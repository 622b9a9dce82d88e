"""DecodeSlots: at most ``running`` turns at once, ``waiting`` more queue for one, and the next is 429."""

from __future__ import annotations

import asyncio

import pytest

from modelhost.decodes import DecodeSlots
from modelhost.errors import Overloaded

pytestmark = pytest.mark.unit


async def test_turns_past_running_wait_and_past_waiting_are_429() -> None:
    slots = DecodeSlots(2, waiting=1)
    inside = 0
    most = 0
    release = asyncio.Event()

    async def decode() -> None:
        nonlocal inside, most
        async with slots.turn():
            inside += 1
            most = max(most, inside)
            await release.wait()
            inside -= 1

    held = [asyncio.create_task(decode()) for _ in range(3)]  # two run, one waits
    while slots._queued < 1:
        await asyncio.sleep(0)
    with pytest.raises(Overloaded) as e:
        async with slots.turn():
            pass
    assert e.value.status == 429 and e.value.retry_after_s is not None
    release.set()
    await asyncio.gather(*held)
    assert most == 2
    async with slots.turn():  # free again
        pass


async def test_a_failed_decode_gives_its_turn_back() -> None:
    slots = DecodeSlots(1, waiting=0)
    with pytest.raises(ValueError):
        async with slots.turn():
            raise ValueError("corrupt")
    async with slots.turn():
        pass
