"""Shared test helpers of the model-host kit."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import pytest

DEADLINE_S = 10.0
POLL_S = 0.01


async def _wait_until(cond: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting until {what}")
        await asyncio.sleep(POLL_S)


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[None]]:
    return _wait_until
