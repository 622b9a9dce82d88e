"""The job runner: works through the store's pending items in the coordinator's bulk lane.

Shape. One scheduler task starts up to ``jobs_parallel`` jobs, oldest first (one at a time by default:
a job keeps one model busy, so jobs one after another swap as rarely as possible). A running job pages
through its pending items in order and hands them to a few workers; each worker reads and hashes its
item, looks the content up in the results (an identical file was already inferred: its result is shared),
and otherwise asks the task adapter, whose every service call goes through ``ItemContext.infer``.

``infer`` is where a job is a good neighbour:

- at most ``concurrency`` calls of one job are in flight (default: twice the model's ``max_batch``): one
  batch running and the next one waiting in the service's batcher, so the model never idles between
  batches while the gateway turns answers into new requests;
- before each call it steps aside while interactive requests are in flight on the same device, and for
  ``jobs_yield_s`` after the last one (``InteractiveGate``);
- calls go through ``ModelAccess.use(..., lane=BULK)``, so a model swap for a job waits for the bulk
  lane's patience and interactive work is scheduled first;
- a service that is unavailable (429/503/504, or unreachable) pauses the job with a growing back-off
  and the item is tried again, without counting against it; a server error (5xx) counts an attempt
  (``jobs_max_attempts``); a client error (4xx) is the item's final error at once.

Invariants (the tests check them after ``kill -9``):

1. An item's outcome is recorded once (``JobStore.finish_item`` changes only pending items, in one
   transaction with its result and the job's counters). A crash before that commit leaves it pending;
   the restarted runner does it again.
2. A job ends exactly once (``finish_job`` changes only active jobs), after its last item: completed,
   cancelled (pending items are recorded as cancelled), or failed (the model left the catalog, its
   service is not configured, or it can never fit).
3. The same content under the same task, model and options is inferred once: the results table is
   looked up first, and two items of the same content in flight at once share one inference.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from modelhost.catalog import Catalog
from modelhost.client import ModelHostClient
from modelhost.errors import RoundhouseError

from ..access import ModelAccess
from ..coordinator.loop import Coordinator
from ..coordinator.policy import BULK
from ..images import check_image
from .inputs import BlobStore, Library, sha256_file
from .media import MediaError
from .store import CANCELLED, COMPLETED, FAILED, TERMINAL_STATES, AsyncStore, Item
from .tasks import TASKS, ItemFailed, Task

log = logging.getLogger(__name__)

PAGE = 256
TRANSIENT_STATUSES = frozenset({429, 503, 504})
# Errors after which no item of the job can succeed: the job fails rather than erring every item.
FATAL_CODES = frozenset({"model_not_found", "service_not_configured", "insufficient_memory"})
MAX_BACKOFF_S = 30.0


class JobFatal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class RetryItem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def new_job_id() -> str:
    return "job_" + secrets.token_hex(8)


class InteractiveGate:
    """Bulk calls step aside while interactive requests are in flight (or waiting) on their device, and
    for ``yield_s`` after the last one: a person clicking through photos sends requests a second or two
    apart, and each one that lands behind a bulk batch waits for the whole batch. So the job waits for a
    quiet spell, and an interactive session pays for at most the batch in flight when it began.

    Starvation guard: after ``max_yield_s`` of continuous yielding, the calls waiting here go through once
    (one batch), so a never-ending stream of interactive traffic slows a job down but never stops it.

    How interactive traffic is seen: the coordinator's Core counts every request between ``acquire`` and
    ``release`` per device. The runner counts its own (``mine``) from just before ``ModelAccess.use`` to
    just after it returns; both change only in synchronous code around those calls, so "the Core counts
    more than mine" means someone else's request, i.e. interactive traffic."""

    def __init__(self, coordinator: Coordinator, yield_s: float | None, max_yield_s: float | None = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.coordinator = coordinator
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


@dataclass
class JobRun:
    """A running job's in-memory state (nothing here needs to survive a restart)."""

    id: str
    task: Task
    device: str
    concurrency: int
    slots: asyncio.Semaphore
    started: float = field(default_factory=time.monotonic)
    completions: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20000))
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    pause_until: float = 0.0
    backoff_s: float = 0.0
    waiting: str | None = None
    fatal: JobFatal | None = None
    main: asyncio.Task | None = None

    def rate(self, now: float, window_s: float = 60.0) -> float | None:
        span = min(window_s, now - self.started)
        if span <= 0.5:
            return None
        n = sum(1 for t in self.completions if t >= now - span)
        return n / span


class JobRunner:
    def __init__(self, store: AsyncStore, access: ModelAccess, catalog: Catalog, settings: Any, *,
                 coordinator: Coordinator, metrics: Any, blobs: BlobStore, library: Library, scratch_dir: Path,
                 request_timeout_s: float, max_image_bytes: int, max_image_pixels: int) -> None:
        self.store = store
        self.access = access
        self.catalog = catalog
        self.settings = settings
        self.coordinator = coordinator
        self.metrics = metrics
        self.blobs = blobs
        self.library = library
        self.scratch_dir = scratch_dir
        self.request_timeout_s = request_timeout_s
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.gate = InteractiveGate(coordinator, settings.jobs_yield_s, settings.jobs_max_yield_s)
        self.runs: dict[str, JobRun] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._kick = asyncio.Event()
        self._scheduler: asyncio.Task | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self.uploads_in_progress = 0
        self._cancelling: set[str] = set()

    # lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        self.scratch_dir.mkdir(parents=True, exist_ok=True)
        keep = await self.store.blobs_in_use()
        removed = await asyncio.to_thread(self.blobs.remove_unused, keep)
        active = await self.store.active_jobs()
        if active or removed:
            log.info("jobs: %d active job(s) to resume; %d unused upload(s) removed", len(active), removed)
        self._scheduler = asyncio.create_task(self._schedule_forever(), name="jobs-scheduler")

    async def close(self) -> None:
        tasks = [t for t in [self._scheduler, *(r.main for r in self.runs.values())] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def kick(self) -> None:
        self._kick.set()

    def wake(self, job_id: str) -> None:
        run = self.runs.get(job_id)
        if run is not None:
            run.wake.set()
        self.notify(job_id)

    # progress notifications (SSE) ----------------------------------------------------------------

    def notify(self, job_id: str) -> None:
        ev = self._changed.pop(job_id, None)
        if ev is not None:
            ev.set()

    def change_event(self, job_id: str) -> asyncio.Event:
        """An event set at the job's next change (take it before reading the job, then wait on it)."""
        return self._changed.setdefault(job_id, asyncio.Event())

    def progress(self, job_id: str) -> dict[str, Any]:
        """Rate and back-off of a running job (empty when it is not running here)."""
        run = self.runs.get(job_id)
        if run is None:
            return {}
        now = time.monotonic()
        out: dict[str, Any] = {"rate_per_s": run.rate(now), "concurrency": run.concurrency,
                               "yielding": self.gate.yielding(run.device)}
        if run.waiting and run.pause_until > now:
            out["waiting"] = {"reason": run.waiting, "retry_in_s": round(run.pause_until - now, 2)}
        return out

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
        cls = TASKS[job["task"]]
        spec = self.access.spec(job["model"], cls.family)
        return cls(job["model"], job["params"], spec)

    def _start_run(self, job: dict[str, Any]) -> None:
        try:
            task = self.task_for(job)
        except RoundhouseError as e:
            asyncio.create_task(self._fail(job["id"], JobFatal(e.code, e.message)))
            return
        spec = task.spec
        concurrency = self.settings.jobs_concurrency or 2 * max(1, spec.max_batch or 1)
        run = JobRun(job["id"], task, self.coordinator.device_of.get(spec.id, "cpu"), concurrency,
                     asyncio.Semaphore(concurrency))
        self.runs[job["id"]] = run
        run.main = asyncio.create_task(self._run(run), name=f"job-{job['id']}")

    async def _fail(self, job_id: str, e: JobFatal) -> None:
        log.warning("job %s failed: %s", job_id, e.message)
        await self.store.finish_job(job_id, FAILED, error={"code": e.code, "message": e.message})
        self.notify(job_id)
        self.kick()

    async def _run(self, run: JobRun) -> None:
        job_id = run.id
        self.metrics.jobs_active.inc()
        workers: list[asyncio.Task] = []
        try:
            await self.store.set_running(job_id)
            self.notify(job_id)
            log.info("job %s: running (%s with %s, %d in flight)", job_id, run.task.name, run.task.model, run.concurrency)
            queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=run.concurrency * 2)
            workers = [asyncio.create_task(self._worker(run, queue)) for _ in range(run.concurrency * 2)]
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
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w
            self.metrics.jobs_active.dec()
            self.runs.pop(job_id, None)
            self.notify(job_id)
            self.kick()
            await self._remove_blobs(job_id)

    async def _remove_blobs(self, job_id: str) -> None:
        """Uploads of a finished job that no pending item needs any more. Skipped while an upload is
        being received (its blob may share content with this job's and not be in the database yet)."""
        if self.uploads_in_progress:
            return
        with contextlib.suppress(Exception):
            job = await self.store.get_job(job_id)
            if job is None or job["state"] not in TERMINAL_STATES:
                return
            candidates = await self.store.job_blobs(job_id)
            keep = await self.store.blobs_in_use()
            await asyncio.to_thread(self.blobs.remove_unused, keep, candidates)

    async def cancel(self, job_id: str) -> bool:
        """Cancel an active job: in-flight items stop, pending ones are recorded as cancelled."""
        self._cancelling.add(job_id)  # the scheduler must not restart it before it is recorded
        run = self.runs.get(job_id)
        if run is not None and run.main is not None:
            run.main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.main
        try:
            ok = await self.store.finish_job(job_id, CANCELLED)
        finally:
            self._cancelling.discard(job_id)
        if ok:
            job = await self.store.get_job(job_id)
            log.info("job %s: cancelled", job_id)
            if job is not None and job["n_cancelled"]:
                self.metrics.items.labels(job["task"], "cancelled").inc(job["n_cancelled"])
        self.notify(job_id)
        self.kick()
        await self._remove_blobs(job_id)
        return ok

    # items ---------------------------------------------------------------------------------------

    async def _worker(self, run: JobRun, queue: asyncio.Queue[Item]) -> None:
        while True:
            item = await queue.get()
            try:
                await self._process(run, item)
            except JobFatal as e:
                run.fatal = e
                if run.main is not None:
                    run.main.cancel()
                return
            finally:
                queue.task_done()

    async def _process(self, run: JobRun, item: Item) -> None:
        t0 = time.monotonic()
        sha: str | None = None
        attempts = item.attempts
        while True:
            try:
                sha, key, body, reused = await self._infer_item(run, item)
                try:
                    finished = await self.store.finish_item(item.job_id, item.seq, sha256=sha, result_key=key, body=body,
                                                            reused=reused, seconds=time.monotonic() - t0)
                finally:
                    if not reused:
                        self.stored(key)
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
            seconds = time.monotonic() - t0
            self.metrics.items.labels(run.task.name, outcome).inc()
            self.metrics.item_seconds.labels(run.task.name).observe(seconds)
            run.completions.append(time.monotonic())
            self.notify(item.job_id)

    async def _infer_item(self, run: JobRun, item: Item) -> tuple[str | None, str, Any, bool]:
        task = run.task
        if item.kind not in task.kinds:
            raise ItemFailed("unsupported_input", f"the {task.name} task does not read {item.kind} files ({item.source})")
        ctx = ItemContext(self, run)
        prefix = task.key_prefix()
        try:
            if item.kind == "image":
                data, sha, problem = await asyncio.to_thread(self._read_image, item)

                async def compute() -> Any:
                    if problem is not None:
                        raise problem
                    return await task.image(ctx, data)
            else:
                sha = await asyncio.to_thread(self._hash, item)
                path = item.path if item.upload else self.library.check(item.path)

                async def compute() -> Any:
                    if item.kind == "video":
                        return await task.video(ctx, path)
                    return await task.audio(ctx, path)
            key = f"{prefix}:{sha}"
            body, reused = await self.once(key, compute)
            return sha, key, body, reused
        except MediaError as e:
            raise ItemFailed(e.code, e.message)
        except RoundhouseError as e:
            if e.status == 403:
                raise ItemFailed("outside_library", e.message)
            raise

    def _read_image(self, item: Item) -> tuple[bytes, str, ItemFailed | None]:
        """Read, hash and check an image in one trip to a thread: (bytes, sha256, why it cannot be sent)."""
        data = self._read(item, self.max_image_bytes)
        sha = hashlib.sha256(data).hexdigest()
        try:
            check_image(data, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
        except RoundhouseError as e:
            return data, sha, ItemFailed(e.code, e.message)
        return data, sha, None

    def _read(self, item: Item, max_bytes: int) -> bytes:
        with self._open(item) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ItemFailed("file_too_large", f"{item.source} has {size} bytes; the limit for an image is {max_bytes}")
            return f.read()

    def _hash(self, item: Item) -> str:
        with self._open(item) as f:
            size = os.fstat(f.fileno()).st_size
            if size > self.settings.jobs_max_file_bytes:
                raise ItemFailed("file_too_large", f"{item.source} has {size} bytes; the limit is {self.settings.jobs_max_file_bytes}")
            return sha256_file(f)

    def _open(self, item: Item):  # noqa: ANN202 - a binary file
        try:
            return open(item.path, "rb") if item.upload else self.library.open_checked(item.path)
        except PermissionError as e:
            raise ItemFailed("outside_library", str(e))
        except FileNotFoundError:
            raise ItemFailed("file_not_found", f"{item.source} no longer exists")
        except IsADirectoryError:
            raise ItemFailed("not_a_file", f"{item.source} is not a file")
        except OSError as e:
            raise ItemFailed("unreadable_file", f"{item.source} could not be read: {e.strerror}")

    async def once(self, key: str, compute: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """The result for ``key``: stored, being computed by another item (shared), or computed now.
        Returns (result, reused)."""
        while True:
            body = await self.store.cached_result(key)
            if body is not None:
                return body, True
            fut = self._inflight.get(key)
            if fut is None:
                break
            try:
                return await asyncio.shield(fut), True
            except asyncio.CancelledError:
                if fut.cancelled():
                    continue  # its owner was cancelled (another job); compute it here
                raise
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" noise
        self._inflight[key] = fut
        try:
            body = await compute()
        except asyncio.CancelledError:
            self._inflight.pop(key, None)
            fut.cancel()
            raise
        except BaseException as e:
            self._inflight.pop(key, None)
            fut.set_exception(e)
            raise
        # The finished future stays until the caller has stored the result (``stored``): until then an
        # identical item that looks in the store finds nothing, and must find it here instead.
        fut.set_result(body)
        return body, False

    def stored(self, key: str) -> None:
        """The result for ``key`` is in the store now; lookups go there."""
        self._inflight.pop(key, None)

    # calls to the services ------------------------------------------------------------------------

    async def call_service(self, run: JobRun, call: Callable[[ModelHostClient], Awaitable[Any]], timeout_s: float | None) -> Any:
        task = run.task
        while True:
            now = time.monotonic()
            if run.pause_until > now:
                await asyncio.sleep(run.pause_until - now)
            async with run.slots:
                await self.gate.clear(run.device)
                self.gate.mine[run.device] += 1
                try:
                    result = await self.access.use(task.model, task.family, call, lane=BULK,
                                                   timeout_s=timeout_s or self.request_timeout_s)
                except RoundhouseError as e:
                    code = getattr(e, "code", "error")
                    status = getattr(e, "status", 500)
                    if code in FATAL_CODES:
                        raise JobFatal(code, e.message)
                    if status in TRANSIENT_STATUSES:
                        self._pause(run, e)
                        continue
                    if status >= 500:
                        raise RetryItem(code, e.message)
                    raise ItemFailed(code, e.message)
                finally:
                    self.gate.mine[run.device] -= 1
            run.backoff_s = 0.0
            run.waiting = None
            return result

    def _pause(self, run: JobRun, e: RoundhouseError) -> None:
        if run.pause_until > time.monotonic():
            return  # already paused: the calls that were in flight meanwhile do not stretch the back-off
        run.backoff_s = min(MAX_BACKOFF_S, max(0.5, run.backoff_s * 2))
        hint = getattr(e, "retry_after_s", None)
        delay = max(run.backoff_s, float(hint) if isinstance(hint, (int, float)) and hint < MAX_BACKOFF_S else 0.0)
        until = time.monotonic() + delay
        if until > run.pause_until:
            run.pause_until = until
            run.waiting = f"{getattr(e, 'code', 'unavailable')}: {e.message}"
            log.warning("job %s: %s; pausing %.1f s", run.id, run.waiting, delay)
            self.notify(run.id)


class ItemContext:
    """What a task adapter reaches while it works on one item."""

    def __init__(self, runner: JobRunner, run: JobRun) -> None:
        self.runner = runner
        self.run = run
        self.settings = runner.settings
        self.request_timeout_s = runner.request_timeout_s

    async def infer(self, call: Callable[[ModelHostClient], Awaitable[Any]], *, timeout_s: float | None = None) -> Any:
        return await self.runner.call_service(self.run, call, timeout_s)

    async def cached(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        body, reused = await self.runner.once(key, compute)
        if not reused:
            try:
                await self.runner.store.put_result(key, body)
            finally:
                self.runner.stored(key)
        return body

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def scratch(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.runner.scratch_dir))


