"""Events: telling a job's watchers that it changed, and how fast it goes.

A watcher (the SSE stream of ``GET /v1/jobs/{id}/events``) takes ``change_event(job_id)`` *before* it
reads the job, then waits on it. Invariants:

1. No change is missed: every change (an item recorded, a pause, the job's start or end, new inputs)
   calls ``notify`` after it is in the store, and ``notify`` sets the event a watcher took before its
   read. A change between the take and the read sets it too; the watcher then reads once more than
   needed, never once less.
2. An event is set at most once: ``notify`` removes it, so the next watcher takes a fresh one. Nothing
   here grows with the number of changes, only with the number of jobs being watched right now.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Callable


class JobEvents:
    """One-shot change events per job (see the module's docstring)."""

    def __init__(self) -> None:
        self._changed: dict[str, asyncio.Event] = {}
        self.listeners: list[Callable[[str], None]] = []  # told of every change (the gateway's events stream)

    def notify(self, job_id: str) -> None:
        for listener in self.listeners:
            listener(job_id)
        ev = self._changed.pop(job_id, None)
        if ev is not None:
            ev.set()

    def change_event(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change (take it before reading the job, then wait on it)."""
        return self._changed.setdefault(job_id, asyncio.Event())


@dataclass
class Throughput:
    """When a running job's items finished (the last ``maxlen``), for its rate over the last minute."""

    started: float = field(default_factory=time.monotonic)
    completions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20000))

    def finished_one(self) -> None:
        self.completions.append(time.monotonic())

    def rate(self, now: float, window_s: float = 60.0) -> float | None:
        """Items per second over the last ``window_s`` (or since the start); None in the first half second."""
        span = min(window_s, now - self.started)
        if span <= 0.5:
            return None
        n = sum(1 for t in self.completions if t >= now - span)
        return n / span
