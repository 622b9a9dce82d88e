"""Items: one item of a running job, from its file to its one recorded outcome.

A worker takes an item from its job's queue and

1. checks that the task reads the item's kind, reads and hashes the file on the file lane (``reading``,
   ``files.Lane``: a read that stalls for ``files.STALL_S`` is an attempt that failed, ``read_stalled``);
2. asks ``Dedup`` for the result under the task's key: stored, in flight for an identical item, or
   computed now by the task adapter, whose every service call goes through ``ItemContext.infer`` and so
   through the job's ``Pace`` (``pacing``);
3. records the outcome in one store transaction (``JobStore.finish_item``).

The outcome, by what was raised:

- nothing: done (``inferred``, or ``deduplicated`` when the result was already known);
- ``ItemFailed`` (a bad file, a kind the task does not read, a 4xx from the service): the item's final
  error at once;
- ``RetryItem`` (a 5xx) or any unforeseen exception: one attempt counted in the store; after
  ``jobs_max_attempts`` the error is final, until then the item is tried again after a back-off;
- ``JobFatal``: passed up; the runner fails the job (and records its pending items as cancelled).

Invariants:

1. An item's outcome is recorded once: ``finish_item`` changes only pending items. A cancel that got
   there first wins, and then nothing is counted or notified here.
2. No error leaves an item pending for ever: an unforeseen exception (a bug, an adapter that cannot read
   an answer) is an attempt like a 5xx, code ``internal_error``, so it ends after ``jobs_max_attempts``.
3. A freshly computed result is released from ``Dedup`` (``stored``) after the store transaction,
   whether that transaction succeeded or not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from ..access import Upstream
from .dedup import Dedup
from .events import JobEvents, Throughput
from .files import STALL_S, Lane, Stalled
from .media import MediaError
from .pacing import MAX_BACKOFF_S, JobFatal, Pace, RetryItem
from .reading import ItemReader
from .store import Item
from .tasks import ItemFailed, Task

if TYPE_CHECKING:
    from ..config import JobSettings
    from .runner import RunnerParts

log = logging.getLogger(__name__)

READ_THREADS = 8
MEDIA_THREADS = 2
"""Videos decoded at once (keyframes, audio tracks): each decode keeps a core busy, so a few only."""
"""Most item files read at once, over every job (what a hung mount can hold at worst)."""


@dataclass
class JobRun:
    """A running job's in-memory state (nothing here needs to survive a restart)."""

    id: str
    task: Task
    pace: Pace
    throughput: Throughput = field(default_factory=Throughput)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set when inputs are added to the open job
    fatal: JobFatal | None = None  # set by the worker that found it, before it cancels ``main``
    main: asyncio.Task | None = None
    workers: list[asyncio.Task] = field(default_factory=list)  # ``main``'s item workers, once it has started them


class Items:
    """The item workers of every running job."""

    def __init__(self, parts: RunnerParts, settings: JobSettings, *, reader: ItemReader, dedup: Dedup,
                 events: JobEvents, request_timeout_s: float) -> None:
        self.store = parts.store
        self.metrics = parts.metrics
        self.scratch_dir = parts.scratch_dir
        self.settings = settings
        self.reader = reader
        self.dedup = dedup
        self.events = events
        self.request_timeout_s = request_timeout_s
        self.files = Lane("job-files", threads=READ_THREADS, stall_s=STALL_S)
        self.media = ThreadPoolExecutor(MEDIA_THREADS, thread_name_prefix="job-media")  # off the loop, bounded

    async def work(self, run: JobRun, queue: asyncio.Queue[Item]) -> None:
        """One worker: items from ``queue`` until cancelled, or until one finds the job cannot go on."""
        while True:
            item = await queue.get()
            try:
                await self.process(run, item)
            except JobFatal as e:
                run.fatal = e
                if run.main is not None:
                    run.main.cancel()
                return
            finally:
                queue.task_done()

    async def process(self, run: JobRun, item: Item) -> None:
        t0 = time.monotonic()
        sha: str | None = None
        while True:
            try:
                sha, key, body, reused = await self._infer(run, item)
                try:
                    finished = await self.store.finish_item(item.job_id, item.seq, sha256=sha, result_key=key, body=body,
                                                            reused=reused, seconds=time.monotonic() - t0)
                finally:
                    if not reused:
                        self.dedup.stored(key)
                outcome = "deduplicated" if reused else "inferred"
                break
            except ItemFailed as e:
                finished = await self.store.finish_item(item.job_id, item.seq, sha256=sha, error=(e.code, e.message),
                                                        seconds=time.monotonic() - t0)
                outcome = "error"
                break
            except JobFatal:
                raise
            except (RetryItem, Exception) as e:
                if not isinstance(e, RetryItem):  # a bug or an unforeseen failure: never leave the item pending
                    log.exception("job %s item %d: unexpected error", item.job_id, item.seq)
                    e = RetryItem("internal_error", f"the item failed unexpectedly ({type(e).__name__})")
                attempts = await self.store.count_attempt(item.job_id, item.seq)
                if attempts >= self.settings.jobs_max_attempts:
                    finished = await self.store.finish_item(item.job_id, item.seq, sha256=sha, error=(e.code, e.message),
                                                            seconds=time.monotonic() - t0)
                    outcome = "error"
                    break
                log.info("job %s item %d: %s (attempt %d of %d); trying again", item.job_id, item.seq, e.message,
                         attempts, self.settings.jobs_max_attempts)
                await asyncio.sleep(min(MAX_BACKOFF_S, 0.5 * 2 ** attempts))
        if finished:
            self.metrics.items.labels(run.task.name, outcome).inc()
            self.metrics.item_seconds.labels(run.task.name).observe(time.monotonic() - t0)
            run.throughput.finished_one()
            self.events.notify(item.job_id)

    async def _infer(self, run: JobRun, item: Item) -> tuple[str | None, str, Any, bool]:
        """(sha256, result key, result, reused) of one item; raises ``ItemFailed`` for a bad input."""
        task = run.task
        if item.kind not in task.kinds:
            raise ItemFailed("unsupported_input", f"the {task.name} task does not read {item.kind} files ({item.source})")
        ctx = ItemContext(self, run)
        try:
            if item.kind == "image":
                data, sha, problem = await self.files.run(self.reader.read_image, item)

                async def compute() -> Any:
                    if problem is not None:
                        raise problem
                    return await task.image(ctx, data)
            else:
                sha = await self.files.run(self.reader.hash_file, item)
                path = self.reader.path_of(item)

                async def compute() -> Any:
                    if item.kind == "video":
                        return await task.video(ctx, path)
                    return await task.audio(ctx, path)
            key = f"{task.key_prefix()}:{sha}"
            body, reused = await self.dedup.once(key, compute)
            return sha, key, body, reused
        except MediaError as e:
            raise ItemFailed(e.code, e.message)
        except Stalled as e:  # a hung mount may come back: an attempt, like a 5xx
            raise RetryItem("read_stalled", f"{item.source} could not be read: {e}")


class ItemContext:
    """What a task adapter reaches while it works on one item (``tasks.base.Context``)."""

    def __init__(self, items: Items, run: JobRun) -> None:
        self._items = items
        self._run = run
        self.settings = items.settings
        self.request_timeout_s = items.request_timeout_s

    async def infer(self, call: Callable[[Upstream], Awaitable[Any]], *, timeout_s: float | None = None) -> Any:
        return await self._run.pace.call(call, timeout_s)

    async def cached(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        return await self._items.dedup.cached(key, compute, job_id=self._run.id)

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the jobs' media executor (a few threads of their own, not the loop's default pool)."""
        return await asyncio.get_running_loop().run_in_executor(self._items.media, functools.partial(fn, *args))

    def scratch(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self._items.scratch_dir))
