"""The warm spare worker: a worker process started ahead of need, its frameworks imported, no device touched.

Why: a swap into a family whose worker had ended used to pay for a process start and the family's imports
(torch and transformers: 6.8 s of a 7 s load of a tiny BLIP on CPU) before a single weight moved, because
unloading a family's last model ends its worker (what frees every byte of its device memory). A spare pays
for those in the background, when nobody waits, and holds no device memory: importing torch, onnxruntime or
ctranslate2 creates no CUDA context; the load that takes the spare creates it.

Invariants:

* A spare is a ``WorkerProcess`` started exactly like the family's worker (same command line, environment,
  ``CUDA_VISIBLE_DEVICES``, thread caps) and then sent ``preload``; it becomes the worker by ``take``,
  which only reassigns its exit callback. Nothing else differs, so a spare can always become a worker.
* At most one spare per service, started by ``replenish`` (idempotent); ``take`` hands it over at most once
  and only after its start and imports ended (a load's imports never race the spare's own in the child).
* A spare that dies or fails to start is replaced, after a back-off that doubles with each failure in a
  row (capped), so a spare that cannot start never spins; a spare taken resets the count.
* ``close`` stops it; after ``close`` none is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psutil

from .contract import SpareWorker
from .meter import MemoryMeter, MeterError
from .metrics import HostMetrics
from .settings import HostSettings
from .worker import ExitCallback, WorkerDied, WorkerError, WorkerProcess

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


class SpareKeeper:
    def __init__(self, *, family: str, settings: HostSettings, metrics: HostMetrics, gpu_index: int | None,
                 backend_paths: list[str]) -> None:
        self.family = family
        self._settings = settings
        self._metrics = metrics
        self._gpu_index = gpu_index
        self._backend_paths = sorted(set(backend_paths))
        self._spare: WorkerProcess | None = None
        self._task: asyncio.Task | None = None  # the spare's start and imports (and the back-off before them)
        self._ready = False
        self._preloaded: list[str] = []
        self._preload_s: float | None = None
        self._failures = 0
        self._closed = False
        metrics.set_spare_state("none")
        metrics.spare_memory.labels(family).set_function(self.host_memory_bytes)

    # the keeper's life ---------------------------------------------------------------------------

    def replenish(self) -> None:
        """Start a spare in the background unless one is kept or starting."""
        if self._closed or self._spare is not None or (self._task is not None and not self._task.done()):
            return
        delay_s = 0.0 if self._failures == 0 else min(MAX_BACKOFF_S, 2.0 ** self._failures)
        # Without a back-off the spare exists from now on, so a load asked for before its task first runs
        # waits for it rather than starting a second process.
        self._task = asyncio.create_task(self._start(delay_s, None if delay_s else self._new()), name=f"{self.family}-spare")

    def _new(self) -> WorkerProcess:
        worker = WorkerProcess(gpu_index=self._gpu_index, on_exit=self._on_exit, threads=self._settings.worker_threads)
        self._spare, self._ready = worker, False
        self._metrics.set_spare_state("starting")
        return worker

    async def _start(self, delay_s: float, worker: WorkerProcess | None) -> None:
        if worker is None:
            log.info("%s spare worker: retrying in %.0f s (%d failure(s) in a row)", self.family, delay_s, self._failures)
            await asyncio.sleep(delay_s)
            if self._closed:
                return
            worker = self._new()
        t0 = time.perf_counter()
        try:
            await worker.start(self._settings.worker_start_timeout_s)
            info = await worker.call("preload", {"backend_paths": self._backend_paths},
                                     timeout_s=self._settings.load_timeout_s)
        except (WorkerDied, WorkerError, asyncio.TimeoutError, OSError) as e:
            log.warning("%s spare worker failed to start: %s", self.family, str(e) or type(e).__name__)
            worker.kill()
            if self._spare is worker:
                self._lost()
                self._replace_soon()
            return
        if self._spare is not worker:
            return  # taken meanwhile: it is the family's worker now
        if info["device_initialized"]:  # a backend's preload touched the device: a spare must hold none
            log.error("%s spare worker (pid %s): its imports initialised CUDA; not keeping it", self.family, worker.pid)
            self._lost()
            await self._stop(worker)
            return  # not replaced: the next would do the same
        self._ready = True
        self._preloaded, self._preload_s = list(info["imported"]), float(info["preload_s"])
        self._metrics.set_spare_state("ready")
        log.info("%s spare worker ready (pid %s): %d module(s) imported in %.2f s, %.2f s after its start",
                 self.family, worker.pid, len(self._preloaded), self._preload_s, time.perf_counter() - t0)

    async def take(self, on_exit: ExitCallback) -> WorkerProcess | None:
        """Hand the spare over as the family's worker (its exits then go to ``on_exit``), waiting for its
        start and imports if they are under way; ``None`` when there is none or it failed."""
        task, worker = self._task, self._spare
        if worker is None:
            return None  # none, or a back-off before the next: a cold start is quicker than waiting
        if task is not None and not task.done():
            await asyncio.shield(task)
            if self._spare is not worker:
                return None  # it failed to start (and is accounted for)
        self._spare, self._ready, self._failures = None, False, 0
        self._metrics.set_spare_state("none")
        if worker.dead:
            return None
        worker.on_exit = on_exit
        self._metrics.worker_starts.labels(self.family, "spare").inc()
        log.info("%s spare worker (pid %s) becomes the worker", self.family, worker.pid)
        return worker

    async def close(self) -> None:
        self._closed = True
        task, worker = self._task, self._spare
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._spare, self._ready = None, False
        self._metrics.set_spare_state("none")
        if worker is not None:
            await self._stop(worker)

    async def _stop(self, worker: WorkerProcess) -> None:
        worker.on_exit = _ignore_exit
        await worker.stop(timeout_s=10.0)

    def _on_exit(self, worker: WorkerProcess, code: int | None) -> None:
        if worker is not self._spare:
            return  # stopped on purpose
        log.warning("%s spare worker (pid %s) exited with code %s; replacing it", self.family, worker.pid, code)
        self._lost()
        self._replace_soon()

    def _lost(self) -> None:
        self._spare, self._ready = None, False
        self._failures += 1
        self._metrics.set_spare_state("none")

    def _replace_soon(self) -> None:
        # Called from inside the start task or while it still awaits the dead spare's reply: replenish
        # runs once that task is done (its wake-up is scheduled before this callback).
        asyncio.get_running_loop().call_soon(self.replenish)

    # views ---------------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._spare.pid if self._spare is not None and not self._spare.dead else None

    def host_memory_bytes(self) -> float:
        pid = self.pid
        if pid is None:
            return 0.0
        try:
            return float(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return 0.0

    def row(self, meter: MemoryMeter) -> SpareWorker | None:
        pid = self.pid
        if pid is None:
            return None
        try:
            device_bytes = meter.process_bytes(pid)
        except MeterError:
            device_bytes = 0
        return SpareWorker(state="ready" if self._ready else "starting", pid=pid,
                           host_memory_bytes=int(self.host_memory_bytes()), device_memory_bytes=device_bytes,
                           preload_s=self._preload_s if self._ready else None,
                           preloaded=self._preloaded if self._ready else [])


def _ignore_exit(worker: WorkerProcess, code: int | None) -> None:
    pass
