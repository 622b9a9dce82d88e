"""A service's limit on decodes at once (images, audio): each decode's memory is bounded by its own checks
(``modelhost.images.plan_decode``, asr-svc's duration limit), and this bounds how many run together, so a
burst of uploads cannot multiply one decode's memory without end.

At most ``running`` decodes hold a turn at once; up to ``waiting`` more wait for one; a request past those
is 429 ``overloaded`` with Retry-After at once. A route reads the upload's bytes inside its turn, so a
request waiting for one holds only the upload as the server spooled it (to disk past 1 MB).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

from .errors import Overloaded


class DecodeSlots:
    def __init__(self, running: int, *, waiting: int | None = None, what: str = "decodes") -> None:
        self.running = running
        self.waiting = 8 * running if waiting is None else waiting
        self.what = what
        self._queued = 0
        self._slots: asyncio.Semaphore | None = None  # made on the loop that first uses it

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the ``running`` turns (read and decode inside it), or 429 when too many already wait."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.running)
        slots = self._slots
        if slots.locked() and self._queued >= self.waiting:
            raise Overloaded(f"{self.running} {self.what} are running and {self._queued} waiting; try again shortly",
                             param="file")
        self._queued += 1
        try:
            await slots.acquire()
        finally:
            self._queued -= 1
        try:
            yield
        finally:
            slots.release()
