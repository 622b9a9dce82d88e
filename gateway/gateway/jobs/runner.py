"""The job runner's scheduling: which jobs run, and how each one starts, ends and is cancelled.

Shape. One scheduler task starts up to ``jobs_parallel`` jobs, oldest first (one at a time by default:
a job keeps one model busy, so jobs one after another swap as rarely as possible). A running job pages
through its pending items in order and hands them to its workers (``items``), which read and hash each
item (``reading``), share identical content (``dedup``) and reach the service through the job's
``Pace`` (``pacing``: concurrency, the yield to interactive traffic, the pause on unavailability).
Watchers are told of every change (``events``).

Invariants (the tests check them after ``kill -9``):

1. An item's outcome is recorded once (``JobStore.finish_item`` changes only pending items, in one
   transaction with its result and the job's counters). A crash before that commit leaves it pending;
   the restarted runner does it again.
2. A job ends exactly once (``finish_job`` changes only active jobs), after its last item: completed,
   cancelled (pending items are recorded as cancelled), or failed (the model left the catalog, its
   service is not configured, or it can never fit: ``pacing.JOB_FATAL``).
3. The scheduler never restarts a job that is being cancelled or deleted (``_cancelling``), and a job
   runs at most once at a time (``runs``).
4. Uploaded blobs are removed only when no pending item needs them, and never while an upload is being
   received (``receiving_uploads``): its blob may share content with a finished job's and not be in the
   database yet. Blobs freed meanwhile are removed when the last upload in progress is in the store.
5. A job is deleted from the store only once no task of its run is left: its workers could otherwise
   record an outcome, or a result, for a job that is gone. Cancel and delete wait for them at most
   ``stop_timeout_s``; a cancel then records the job cancelled anyway (a late outcome changes no item
   that is not pending), while a delete leaves the job cancelled and answers ``"stopping"``, to be tried
   again.

The runner reads the coordinator through its public view only: ``requests_active(dev)`` (the gate) and
``model_state(model).device_ledger`` (a job's device).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

from modelhost.errors import RoundhouseError

from ..access import ModelAccess
from ..config import JobSettings
from ..coordinator.loop import Coordinator
from ..metrics import GatewayMetrics
from .dedup import Dedup
from .events import JobEvents
from .inputs import BlobStore, Library
from .items import Items, JobRun
from .pacing import InteractiveGate, JobFatal, Pace
from .reading import ItemLimits, ItemReader
from .store import CANCELLED, COMPLETED, FAILED, TERMINAL_STATES, AsyncStore, Item
from .tasks import TASKS, Task

log = logging.getLogger(__name__)

PAGE = 256
STOP_TIMEOUT_S = 30.0  # how long a cancel or a delete waits for a job's workers to end (invariant 5)

DeleteOutcome = Literal["deleted", "absent", "stopping"]


def _where(task: asyncio.Task) -> str:
    """A task's coroutine stack, innermost last (what a task that ignores its cancel is waiting on)."""
    out = io.StringIO()
    task.print_stack(limit=12, file=out)
    return out.getvalue()


async def _cancel_all(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again any that lost its cancel and went on
    (library code that swallows one, as Python 3.11's ``asyncio.wait_for`` did: a job's worker that outlived
    its cancel kept its job's run, and no job started after it)."""
    left = [t for t in tasks if not t.done()]
    while left:
        for t in left:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # the caller's own cancel: it is already stopping
            await asyncio.wait(left, timeout=1.0)
        left = [t for t in left if not t.done()]
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            t.result()  # retrieved, as awaiting it would


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


@dataclass(frozen=True)
class RunnerParts:
    """What the runner works with, built once by ``Jobs.build``."""

    store: AsyncStore
    access: ModelAccess
    coordinator: Coordinator  # its public view only (see the module's docstring)
    metrics: GatewayMetrics
    library: Library
    blobs: BlobStore
    scratch_dir: Path  # emptied at start; a task's temporary files (audio pieces) live here


class JobRunner:
    def __init__(self, parts: RunnerParts, settings: JobSettings, *, limits: ItemLimits, request_timeout_s: float) -> None:
        self.parts = parts
        self.store = parts.store
        self.settings = settings
        self.request_timeout_s = request_timeout_s
        self.events = JobEvents()
        self.gate = InteractiveGate(parts.coordinator, settings.jobs_yield_s, settings.jobs_max_yield_s)
        self.items = Items(parts, settings, reader=ItemReader(parts.library, limits), dedup=Dedup(parts.store),
                           events=self.events, request_timeout_s=request_timeout_s)
        self.runs: dict[str, JobRun] = {}
        self._kick = asyncio.Event()
        self._scheduler: asyncio.Task | None = None
        self._cancelling: set[str] = set()
        self._receiving = 0
        self._deferred_blobs: set[str] = set()  # freed while uploads were being received (invariant 4)
        self._sweeps: set[asyncio.Task] = set()
        self.stop_timeout_s = STOP_TIMEOUT_S

    # lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        scratch = self.parts.scratch_dir
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True, exist_ok=True)
        keep = await self.store.blobs_in_use()
        removed = await asyncio.to_thread(self.parts.blobs.remove_unused, keep)
        active = await self.store.active_jobs()
        if active or removed:
            log.info("jobs: %d active job(s) to resume; %d unused upload(s) removed", len(active), removed)
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="jobs-scheduler")

    async def close(self) -> None:
        tasks = [t for t in [self._scheduler, *(r.main for r in self.runs.values()), *self._sweeps] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def kick(self) -> None:
        """Look for jobs to start (one was created, or one ended)."""
        self._kick.set()

    def wake(self, job_id: str) -> None:
        """An open job got inputs: its main loop pages on."""
        run = self.runs.get(job_id)
        if run is not None:
            run.wake.set()
        self.events.notify(job_id)

    @contextlib.contextmanager
    def receiving_uploads(self) -> Iterator[None]:
        """Around receiving uploads and storing their items: no blob is collected meanwhile (invariant 4)."""
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1
            if not self._receiving and self._deferred_blobs:
                deferred, self._deferred_blobs = self._deferred_blobs, set()
                sweep = asyncio.get_running_loop().create_task(self._remove_blobs(deferred))
                self._sweeps.add(sweep)
                sweep.add_done_callback(self._sweeps.discard)

    def progress(self, job_id: str) -> dict[str, Any]:
        """Rate, concurrency, yielding and pause of a running job (empty when it is not running here)."""
        run = self.runs.get(job_id)
        if run is None:
            return {}
        now = time.monotonic()
        return {"rate_per_s": run.throughput.rate(now), **run.pace.view(now)}

    # scheduling ----------------------------------------------------------------------------------

    async def _schedule_forever(self) -> None:
        while True:
            self._kick.clear()
            try:
                for job in await self.store.active_jobs():
                    if len(self.runs) >= self.settings.jobs_parallel:
                        break
                    if job["id"] not in self.runs and job["id"] not in self._cancelling:
                        self._start_run(job)
            except Exception:
                log.exception("jobs: scheduling failed; trying again shortly")
                await asyncio.sleep(1.0)
                continue
            await self._kick.wait()

    def task_for(self, job: dict[str, Any]) -> Task:
        """The job's task with its model's spec: 404 when the model left the catalog."""
        cls = TASKS.get(job["task"])
        if cls is None:
            raise JobFatal("unknown_task", f"this gateway has no {job['task']!r} task")
        spec = self.parts.access.spec(job["model"], cls.family)
        return cls(job["model"], job["params"], spec)

    def _start_run(self, job: dict[str, Any]) -> None:
        try:
            task = self.task_for(job)
        except RoundhouseError as e:
            asyncio.create_task(self._fail(job["id"], JobFatal(e.code, e.message)))
            return
        except JobFatal as e:
            asyncio.create_task(self._fail(job["id"], e))
            return
        concurrency = self.settings.jobs_concurrency or 2 * max(1, task.spec.max_batch or 1)
        device = self.parts.coordinator.model_state(task.spec.id).device_ledger
        pace = Pace(job["id"], task, access=self.parts.access, gate=self.gate, device=device, concurrency=concurrency,
                    request_timeout_s=self.request_timeout_s, on_pause=self.events.notify)
        run = JobRun(job["id"], task, pace)
        self.runs[job["id"]] = run
        run.main = asyncio.create_task(self._run(run), name=f"job-{job['id']}")

    async def _fail(self, job_id: str, e: JobFatal) -> None:
        log.warning("job %s failed: %s", job_id, e.message)
        await self.store.finish_job(job_id, FAILED, error={"code": e.code, "message": e.message})
        self.events.notify(job_id)
        self.kick()

    async def _run(self, run: JobRun) -> None:
        """A job's main loop: page its pending items to its workers until none is left and it is closed."""
        job_id = run.id
        self.parts.metrics.jobs_active.inc()
        workers: list[asyncio.Task] = []
        try:
            await self.store.set_running(job_id)
            self.events.notify(job_id)
            log.info("job %s: running (%s with %s, %d in flight)", job_id, run.task.name, run.task.model,
                     run.pace.concurrency)
            queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=run.pace.concurrency * 2)
            workers = run.workers = [asyncio.create_task(self.items.work(run, queue))
                                     for _ in range(run.pace.concurrency * 2)]
            last_seq = -1
            while True:
                run.wake.clear()
                page = await self.store.pending_items(job_id, after_seq=last_seq, limit=PAGE)
                for item in page:
                    await queue.put(item)
                    last_seq = item.seq
                if page:
                    continue
                await queue.join()
                if await self.store.pending_items(job_id, after_seq=-1, limit=1):
                    last_seq = -1  # added meanwhile, or (never expected) left pending: look again from the start
                    continue
                job = await self.store.get_job(job_id)
                if job is None or not job["open"]:
                    break
                await run.wake.wait()  # more inputs are coming (POST /v1/jobs/{id}/inputs)
            summary, people = None, []
            if run.task.wants_results_at_finish():
                results = await self.store.call(lambda: list(self.store.sync.done_results(job_id)))
                summary, people = await asyncio.to_thread(run.task.finish, results)
            if await self.store.finish_job(job_id, COMPLETED, summary=summary, people=people):
                log.info("job %s: completed", job_id)
        except asyncio.CancelledError:
            if run.fatal is None:
                raise
            await self._fail(job_id, run.fatal)
        except JobFatal as e:
            await self._fail(job_id, e)
        finally:
            await _cancel_all(workers)
            self.parts.metrics.jobs_active.dec()
            self.runs.pop(job_id, None)
            self.events.notify(job_id)
            self.kick()
            await self._remove_job_blobs(job_id)

    async def cancel(self, job_id: str) -> bool:
        """Cancel an active job: in-flight items stop (waited for at most ``stop_timeout_s``), pending ones
        are recorded as cancelled. False when the job was not active (it ended first, or is gone)."""
        self._cancelling.add(job_id)  # the scheduler must not restart it before it is recorded (invariant 3)
        try:
            await self._stop(job_id)
            ok = await self._record_cancel(job_id)
        finally:
            self._cancelling.discard(job_id)
        self.events.notify(job_id)
        self.kick()
        await self._remove_job_blobs(job_id)
        return ok

    async def delete(self, job_id: str) -> DeleteOutcome:
        """Delete a job: cancel it first if it is active (as ``cancel``), then remove it from the store with
        its items, people and the results only it used, and its uploads that no pending item needs.
        ``"stopping"`` when its workers had not ended after ``stop_timeout_s`` (the job is left cancelled;
        invariant 5), ``"absent"`` when there is no such job (or another delete got there first)."""
        self._cancelling.add(job_id)  # invariant 3: not restarted between its cancel and its removal
        try:
            stopped = await self._stop(job_id)
            await self._record_cancel(job_id)
            blobs = await self.store.delete_job(job_id) if stopped else set()
        finally:
            self._cancelling.discard(job_id)
        self.events.notify(job_id)  # its watchers find it gone
        self.kick()
        if not stopped:
            return "stopping"
        if blobs is None:
            return "absent"
        log.info("job %s: deleted", job_id)
        await self._remove_blobs(blobs)
        return "deleted"

    async def _stop(self, job_id: str) -> bool:
        """Cancel the job's run here, if it has one, and wait at most ``stop_timeout_s`` for its main loop
        and each of its workers to end (the main loop cancels them; a worker that is slow to stop could
        outlive a main loop cancelled twice). True when nothing of it runs any more."""
        run = self.runs.get(job_id)
        if run is None or run.main is None:
            return True
        run.main.cancel()  # it cannot start workers after this: they are started, or never will be
        tasks = {run.main, *run.workers}
        _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout_s)
        if pending:
            log.warning("job %s: %d of its tasks have not stopped after %.1f s; where they wait:\n%s", job_id,
                        len(pending), self.stop_timeout_s, "\n".join(_where(t) for t in list(pending)[:3]))
            return False
        with contextlib.suppress(asyncio.CancelledError, Exception):
            run.main.result()  # retrieved, as awaiting it would (how it ended changes nothing here)
        return True

    async def _record_cancel(self, job_id: str) -> bool:
        """Record an active job cancelled (its pending items too). False when it was not active."""
        if not await self.store.finish_job(job_id, CANCELLED):
            return False
        job = await self.store.get_job(job_id)
        log.info("job %s: cancelled", job_id)
        if job is not None and job["n_cancelled"]:
            self.parts.metrics.items.labels(job["task"], "cancelled").inc(job["n_cancelled"])
        return True

    async def _remove_job_blobs(self, job_id: str) -> None:
        """The uploads of a job that has ended, those no pending item needs any more (invariant 4)."""
        with contextlib.suppress(Exception):
            job = await self.store.get_job(job_id)
            if job is None or job["state"] not in TERMINAL_STATES:
                return
            await self._remove_blobs(await self.store.job_blobs(job_id))

    async def _remove_blobs(self, candidates: set[str]) -> None:
        """Remove those of ``candidates`` that no pending item needs; while uploads are being received,
        once the last of them is in the store (invariant 4)."""
        if not candidates:
            return
        if self._receiving:
            self._deferred_blobs |= candidates
            return
        with contextlib.suppress(Exception):
            keep = await self.store.blobs_in_use()
            await asyncio.to_thread(self.parts.blobs.remove_unused, keep, candidates)
