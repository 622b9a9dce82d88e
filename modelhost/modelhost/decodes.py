"""A service's limit on decodes at once (images, audio): each decode's memory is bounded by its own checks
(``modelhost.images.plan_decode``, asr-svc's duration limit), and this bounds how many run together, so a
burst of uploads cannot multiply one decode's memory without end.

At most ``running`` decodes hold a turn at once; up to ``waiting`` more wait for one; a request past those
is 429 ``overloaded`` with Retry-After at once. A route reads the upload's bytes inside its turn, so a
request waiting for one holds only the upload as the server spooled it (to disk past 1 MB).

When the last turn of a burst ends, the memory the decodes freed is handed back to the system
(glibc's ``malloc_trim``): glibc keeps freed heap for reuse, and after a burst of large images a service
kept gigabytes it no longer used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
from typing import AsyncIterator, Callable

from .errors import Overloaded


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def give_back_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class DecodeSlots:
    def __init__(self, running: int, *, waiting: int | None = None, what: str = "decodes") -> None:
        self.running = running
        self.waiting = 8 * running if waiting is None else waiting
        self.what = what
        self._queued = 0
        self._inside = 0
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
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1
            slots.release()
            if self._inside == 0 and self._queued == 0:  # the burst is over
                await asyncio.to_thread(give_back_freed_memory)
