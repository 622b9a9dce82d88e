"""A backend that "allocates" device memory on the fake NVML of its own process, for tests of the
worker's meter (``modelhost.worker_child``) with the worker's code run in-process.

``sys.modules["pynvml"]`` must be a ``FakeNvml`` (the test installs it). Options:

- ``nvml_index``: which of the fake's GPUs the model's memory lands on (NVML's index);
- ``weights_bytes``: held from ``load()`` until ``close()``;
- ``warmup_bytes``: held only during ``warmup()``, which waits until the worker's sampler has read
  the memory twice, so a peak that short is seen without any sleep in the test;
- ``per_process``: False where the driver does not list the worker's pid (a container's own pid
  namespace): only the device's used bytes change.
"""

from __future__ import annotations

import os
import sys
import time

from modelhost.backend import Backend


class GpuMemoryHog(Backend):
    def _gpu(self):  # noqa: ANN202 - a FakeGpu
        return sys.modules["pynvml"].gpus[int(self.spec.options.get("nvml_index", 0))]

    def _add(self, nbytes: int) -> None:
        gpu = self._gpu()
        gpu.used_bytes += nbytes
        if self.spec.options.get("per_process", True):
            pid = os.getpid()
            gpu.processes[pid] = (gpu.processes.get(pid) or 0) + nbytes
            if gpu.processes[pid] == 0:
                del gpu.processes[pid]

    def load(self) -> str:
        self._held = int(self.spec.options.get("weights_bytes", 0))
        self._add(self._held)
        return "cuda:0"

    def warmup(self) -> None:
        extra = int(self.spec.options.get("warmup_bytes", 0))
        if not extra:
            return
        self._add(extra)
        gpu = self._gpu()
        seen, deadline = gpu.memory_reads, time.monotonic() + 10
        while gpu.memory_reads < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.001)  # the sampler thread reads every 10 ms; wait for two of its reads
        self._add(-extra)

    def infer(self, items: list) -> list:
        return items

    def close(self) -> None:
        self._add(-self._held)
        self._held = 0
