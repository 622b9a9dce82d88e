"""Dynamic batching: gather concurrent requests for one model into one forward pass.

One collector task per model. It takes the first waiting item, then gathers more until the batch
holds ``max_batch`` items or ``max_wait_ms`` has passed since the first one, and runs the batch.
Only one batch per model is in flight: while it runs, new items queue up, so a busy model batches
more and an idle one answers after at most ``max_wait_ms``.

The queue is bounded: past ``max_queue`` waiting items ``submit`` raises ``Overloaded`` (429).
Items whose caller has gone (cancelled future) are dropped before dispatch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Awaitable, Callable

from .errors import Overloaded, Unavailable

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Any]], Awaitable[list[Any]]]
"""Runs a batch; returns one entry per item: a value, or an Exception instance for that item."""


class Batcher:
    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.name = name
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._items: collections.deque[tuple[Any, asyncio.Future]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._close_error: Exception | None = None

    @property
    def depth(self) -> int:
        return len(self._items)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._collect(), name=f"batcher-{self.name}")

    async def submit(self, item: Any) -> Any:
        if self._closed:
            raise Unavailable(f"model {self.name} is shutting down", retry_after_s=1, code="model_not_ready")
        if len(self._items) >= self.max_queue:
            raise Overloaded(
                f"model {self.name} has {len(self._items)} requests waiting; try again shortly",
                retry_after_s=1,
            )
        fut = asyncio.get_running_loop().create_future()
        self._items.append((item, fut))
        self._wakeup.set()
        return await fut

    def _closed_error(self) -> Exception:
        return self._close_error or Unavailable(f"model {self.name} was unloaded", retry_after_s=1, code="model_not_ready")

    async def _collect(self) -> None:
        # Ends when close() cancels it, and also at the next check of _closed: a cancellation can be
        # swallowed (asyncio.wait_for returns an outcome that completed in the same loop step as the
        # cancel, as when the worker dies while close() runs), and close() awaits this task.
        while True:
            while not self._items:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s > 0 and len(self._items) < self.max_batch:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._items) < self.max_batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        async with asyncio.timeout(remaining):
                            await self._wakeup.wait()
                    except asyncio.TimeoutError:
                        break
            if self._closed:
                return  # close() fails whatever still waits
            batch = []
            while self._items and len(batch) < self.max_batch:
                item, fut = self._items.popleft()
                if not fut.done():  # the caller may have gone away
                    batch.append((item, fut))
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                outcomes = await self._run_batch([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(self._closed_error())
                raise
            except Exception as e:  # the whole batch failed (e.g. the worker died)
                outcomes = [e] * len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - t0)
            for (_, fut), outcome in zip(batch, outcomes):
                if fut.done():
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    async def close(self, error: Exception | None = None) -> None:
        """Stop collecting; fail whatever still waits with ``error`` (503 by default)."""
        self._closed = True
        self._close_error = error
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        err = self._closed_error()
        while self._items:
            _, fut = self._items.popleft()
            if not fut.done():
                fut.set_exception(err)
