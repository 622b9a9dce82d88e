"""Pacing and back-off: how a job's calls reach its service without crowding anyone out.

Every service call of a job goes through ``Pace.call``, which is where a job is a good neighbour:

- at most ``concurrency`` calls of one job are in flight (default: twice the model's ``max_batch``): one
  batch running and the next one waiting in the service's batcher, so the model never idles between
  batches while the gateway turns answers into new requests;
- before each call it steps aside while interactive requests are in flight on the same device, and for
  ``jobs_yield_s`` after the last one (``InteractiveGate``);
- the model is held through ``ModelAccess.hold(..., lane=BULK)``, so a model swap for a job waits for the
  bulk lane's patience and interactive work is scheduled first;
- a failed call is judged by its error's class (``verdict``), never by its code or message.

Invariants:

1. A transient error (``RoundhouseError.retryable``: overloaded, not ready, unreachable, deadline) pauses
   the whole job with a growing back-off (at most ``MAX_BACKOFF_S``, or the service's Retry-After when
   shorter than that) and the same call is made again; it never counts against the item.
2. Calls that were already in flight when a pause began do not stretch it: the back-off grows once per
   pause, not once per failed call.
3. ``gate.mine`` counts this runner's calls exactly from just before ``hold`` to just after it ends, in
   synchronous code on both sides, so the gate can tell the job's requests from everyone else's.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import math
import time
from typing import Any, Awaitable, Callable

from modelhost.errors import InsufficientMemory, ModelNotFound, RoundhouseError, ServiceNotConfigured

from ..access import ModelAccess, Upstream
from ..coordinator.policy import BULK
from .tasks import ItemFailed, Task

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0

# Errors after which no item of the job can succeed (the model left the catalog, its service is not
# configured, it can never fit on its device): the job fails rather than erring every item.
JOB_FATAL: tuple[type[RoundhouseError], ...] = (ModelNotFound, ServiceNotConfigured, InsufficientMemory)


class Verdict(enum.Enum):
    FAIL_JOB = "fail_job"    # no item of the job can succeed
    PAUSE = "pause"          # transient: pause the job, call again, count nothing
    RETRY = "retry"          # a server error: counts one of the item's attempts
    FAIL_ITEM = "fail_item"  # the request itself is wrong: the item's final error


def verdict(e: RoundhouseError) -> Verdict:
    """What a failed service call means for the job, by the error's class."""
    if isinstance(e, JOB_FATAL):
        return Verdict.FAIL_JOB
    if e.retryable:
        return Verdict.PAUSE
    if e.status >= 500:
        return Verdict.RETRY
    return Verdict.FAIL_ITEM


class JobFatal(Exception):
    """No item of the job can succeed: the job fails with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RetryItem(Exception):
    """The item failed in a way that may pass on another attempt (counted, up to ``jobs_max_attempts``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class InteractiveGate:
    """Bulk calls step aside while interactive requests are in flight (or waiting) on their device, and
    for ``yield_s`` after the last one: a person clicking through photos sends requests a second or two
    apart, and each one that lands behind a bulk batch waits for the whole batch. So the job waits for a
    quiet spell, and an interactive session pays for at most the batch in flight when it began.

    Starvation guard: after ``max_yield_s`` of continuous yielding, the calls waiting here go through once
    (one batch), so a never-ending stream of interactive traffic slows a job down but never stops it.

    How interactive traffic is seen: ``Coordinator.requests_active(dev)`` counts every request between
    ``acquire`` and ``release`` on a device. The runner counts its own (``mine``, invariant 3 above), so
    "the coordinator counts more than mine" means someone else's request, i.e. interactive traffic."""

    def __init__(self, coordinator: Any, yield_s: float | None, max_yield_s: float | None = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.coordinator = coordinator  # anything with requests_active(dev) -> int
        self.yield_s = yield_s
        self.max_yield_s = max_yield_s
        self.clock = clock
        self.mine: collections.Counter[str] = collections.Counter()
        self.last_seen: dict[str, float] = {}
        self.held_since: dict[str, float] = {}
        self.open_until: dict[str, float] = {}

    def others_active(self, dev: str) -> bool:
        return self.coordinator.requests_active(dev) > self.mine[dev]

    def yielding(self, dev: str) -> bool:
        return dev in self.held_since

    async def clear(self, dev: str) -> None:
        if not self.yield_s:
            return
        while True:
            now = self.clock()
            if self.others_active(dev):
                self.last_seen[dev] = now
            wait = self.last_seen.get(dev, -math.inf) + self.yield_s - now
            if wait <= 0:
                self.held_since.pop(dev, None)
                return
            if now < self.open_until.get(dev, -math.inf):
                return
            held = self.held_since.setdefault(dev, now)
            if self.max_yield_s is not None and now - held >= self.max_yield_s:
                self.open_until[dev] = now + 0.05  # every call waiting now goes through: one batch
                self.held_since[dev] = now
                return
            await asyncio.sleep(min(wait, 0.01))


class Pace:
    """One running job's way to its service: its concurrency, its device's gate, and its pause."""

    def __init__(self, job_id: str, task: Task, *, access: ModelAccess, gate: InteractiveGate, device: str,
                 concurrency: int, request_timeout_s: float, on_pause: Callable[[str], None]) -> None:
        self.job_id = job_id
        self.task = task
        self.access = access
        self.gate = gate
        self.device = device
        self.concurrency = concurrency
        self.request_timeout_s = request_timeout_s
        self.on_pause = on_pause  # told the job id when a pause begins (its watchers see "waiting")
        self.slots = asyncio.Semaphore(concurrency)
        self.pause_until = 0.0
        self.backoff_s = 0.0
        self.waiting: str | None = None  # why the job is paused, while it is

    async def call(self, call: Callable[[Upstream], Awaitable[Any]], timeout_s: float | None = None) -> Any:
        """``await call(upstream)`` with the task's model held in the bulk lane. Raises ``JobFatal``,
        ``RetryItem`` or ``ItemFailed`` by the failure's verdict; a transient one is waited out here."""
        task = self.task
        while True:
            now = time.monotonic()
            if self.pause_until > now:
                await asyncio.sleep(self.pause_until - now)
            async with self.slots:
                await self.gate.clear(self.device)
                self.gate.mine[self.device] += 1
                try:
                    async with self.access.hold(task.model, task.family, lane=BULK,
                                                timeout_s=timeout_s or self.request_timeout_s) as upstream:
                        result = await call(upstream)
                except RoundhouseError as e:
                    v = verdict(e)
                    if v is Verdict.PAUSE:
                        self._pause(e)
                        continue
                    if v is Verdict.FAIL_JOB:
                        raise JobFatal(e.code, e.message)
                    if v is Verdict.RETRY:
                        raise RetryItem(e.code, e.message)
                    raise ItemFailed(e.code, e.message)
                finally:
                    self.gate.mine[self.device] -= 1
            self.backoff_s = 0.0
            self.waiting = None
            return result

    def _pause(self, e: RoundhouseError) -> None:
        if self.pause_until > time.monotonic():
            return  # already paused: the calls that were in flight meanwhile do not stretch the back-off
        self.backoff_s = min(MAX_BACKOFF_S, max(0.5, self.backoff_s * 2))
        hint = e.retry_after_s
        delay = max(self.backoff_s, float(hint) if hint is not None and hint < MAX_BACKOFF_S else 0.0)
        until = time.monotonic() + delay
        if until > self.pause_until:
            self.pause_until = until
            self.waiting = f"{e.code}: {e.message}"
            log.warning("job %s: %s; pausing %.1f s", self.job_id, self.waiting, delay)
            self.on_pause(self.job_id)

    def view(self, now: float) -> dict[str, Any]:
        """Concurrency, yielding, and the pause while there is one (the job status's live part)."""
        out: dict[str, Any] = {"concurrency": self.concurrency, "yielding": self.gate.yielding(self.device)}
        if self.waiting and self.pause_until > now:
            out["waiting"] = {"reason": self.waiting, "retry_in_s": round(self.pause_until - now, 2)}
        return out
