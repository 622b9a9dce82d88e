"""The family's worker slot: its one worker process and its warm spare (``modelhost.spare``).

The runtime asks for a worker (``ensure``) when a load needs one, ends it when its last model leaves
(``stop``) and kills it when it hangs (``kill``); it learns of a crash through ``on_crash``. Invariants:

* At most one worker at a time; ``ensure`` is serialised, so two loads never start two workers.
* ``ensure`` takes the spare when there is one and starts a worker cold otherwise; a spare taken is the
  family's worker from then on, exactly as one started cold (same command line and environment).
* The spare is replenished after every change of the worker (a stop, a crash) and after each load (the
  runtime calls ``replenish`` once a load is over, so a new spare's imports never compete with the load
  that took the last one), in the background; with ``spare_worker`` off none is ever started.
* An orderly stop detaches the worker first, so its exit is never taken for a crash.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .contract import SpareWorker
from .meter import MemoryMeter
from .metrics import HostMetrics
from .settings import HostSettings
from .spare import SpareKeeper
from .worker import WorkerProcess

log = logging.getLogger(__name__)


class WorkerSlot:
    def __init__(self, *, family: str, settings: HostSettings, meter: MemoryMeter, metrics: HostMetrics,
                 gpu_index: int | None, backend_paths: list[str], on_crash: Callable[[int | None], None]) -> None:
        self.family = family
        self._settings = settings
        self._meter = meter
        self._metrics = metrics
        self._gpu_index = gpu_index
        self._on_crash = on_crash
        self._worker: WorkerProcess | None = None
        self._lock = asyncio.Lock()
        self.spare = SpareKeeper(family=family, settings=settings, metrics=metrics, gpu_index=gpu_index,
                                 backend_paths=backend_paths) if settings.spare_worker else None
        metrics.worker_up.labels(family).set(0)

    def start(self) -> None:
        self.replenish()

    def replenish(self) -> None:
        if self.spare is not None:
            self.spare.replenish()

    @property
    def worker(self) -> WorkerProcess | None:
        """The worker, while its process runs."""
        return self._worker if self._worker is not None and not self._worker.dead else None

    @property
    def pid(self) -> int | None:
        worker = self.worker
        return worker.pid if worker is not None else None

    def unresponsive(self) -> str | None:
        """Why the worker is taken for hung (not heard from for ``worker_silent_s``: stopped or frozen), or None.
        A busy worker still beats (``modelhost.worker``); no worker at all is fine: models load on demand."""
        worker = self.worker
        if worker is None:
            return None
        silent_s = worker.silent_s()
        if silent_s <= self._settings.worker_silent_s:
            return None
        return (f"the {self.family} worker (pid {worker.pid}) has not been heard from for {silent_s:.0f} s "
                f"(stopped or frozen; worker_silent_s={self._settings.worker_silent_s:g})")

    def spare_row(self) -> SpareWorker | None:
        return self.spare.row(self._meter) if self.spare is not None else None

    async def ensure(self) -> WorkerProcess:
        """The worker, started (or taken from the spare) if there is none."""
        async with self._lock:
            if self._worker is None or self._worker.dead:
                worker = await self.spare.take(self._on_exit) if self.spare is not None else None
                if worker is None:
                    worker = WorkerProcess(gpu_index=self._gpu_index, on_exit=self._on_exit,
                                           threads=self._settings.worker_threads)
                    await worker.start(self._settings.worker_start_timeout_s)
                    self._metrics.worker_starts.labels(self.family, "cold").inc()
                self._worker = worker
                self._metrics.worker_up.labels(self.family).set(1)
            return self._worker

    async def stop(self, why: str) -> int:
        """End the worker and return the device bytes it held (measured before it ended)."""
        worker = self._worker
        if worker is None:
            return 0
        held = self._meter.process_bytes(worker.pid) if worker.pid else 0
        self._worker = None
        log.info("stopping the %s worker (pid %s): %s", self.family, worker.pid, why)
        await worker.stop(timeout_s=10.0)
        self._metrics.worker_up.labels(self.family).set(0)
        self._metrics.worker_restarts.labels(self.family, "stopped").inc()
        self.replenish()
        return held

    def kill(self, why: str) -> None:
        """A hung worker: kill it; the runtime hears of it through ``on_crash``."""
        worker = self._worker
        if worker is not None:
            log.error("killing the %s worker (pid %s): %s", self.family, worker.pid, why)
            worker.kill()

    async def close(self) -> None:
        # Detach the worker before stopping it, as ``stop`` does: its exit is then an orderly stop, not a
        # crash that fails every READY model and counts worker_exits{cause="crashed"}.
        if self.spare is not None:
            await self.spare.close()
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.stop()
            self._metrics.worker_up.labels(self.family).set(0)

    def _on_exit(self, worker: WorkerProcess, code: int | None) -> None:
        if worker is not self._worker:
            return  # an orderly stop already accounted for
        self._worker = None
        self._metrics.worker_up.labels(self.family).set(0)
        self._metrics.worker_restarts.labels(self.family, "crashed").inc()
        self._on_crash(code)
        self.replenish()
