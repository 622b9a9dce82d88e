"""Memory meters: what a model really uses on its device.

``NvmlMeter`` reads the GPU through NVML (whole-device used bytes, and the bytes of one process
where the driver reports them). ``HostMeter`` is used where no GPU is visible: "device memory" is
then host memory, read as the resident set of a process. Both answer the same two questions, so the
same runtime code runs and is tested on CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    total_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


class MemoryMeter(Protocol):
    kind: str

    def device(self) -> DeviceMemory: ...

    def process_bytes(self, pid: int) -> int:
        """Bytes held on the device by process ``pid`` (0 when it holds none or is gone)."""
        ...


class HostMeter:
    """Host memory: the resident set of a process tree; device totals are the machine's RAM."""

    kind = "host"

    def device(self) -> DeviceMemory:
        vm = psutil.virtual_memory()
        return DeviceMemory(device="cpu", total_bytes=vm.total, used_bytes=vm.total - vm.available)

    def process_bytes(self, pid: int) -> int:
        try:
            proc = psutil.Process(pid)
            total = proc.memory_info().rss
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            return total
        except psutil.Error:
            return 0


class NvmlMeter:
    """One GPU through NVML. Construct with ``NvmlMeter.open(index)``; it raises when NVML or the
    device is not there."""

    kind = "nvml"

    def __init__(self, pynvml_module, handle, index: int) -> None:  # noqa: ANN001 - pynvml is untyped
        self._nvml = pynvml_module
        self._handle = handle
        self.index = index

    @classmethod
    def open(cls, index: int = 0) -> "NvmlMeter":
        import pynvml

        pynvml.nvmlInit()
        return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index), index)

    def device(self) -> DeviceMemory:
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return DeviceMemory(device=f"cuda:{self.index}", total_bytes=int(info.total), used_bytes=int(info.used))

    def process_bytes(self, pid: int) -> int:
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nvml.NVMLError:
            return 0
        pids = {pid}
        try:
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
        return sum(int(p.usedGpuMemory or 0) for p in procs if p.pid in pids)


def open_meter(prefer_gpu: bool, gpu_index: int = 0) -> MemoryMeter:
    """NVML when a GPU is asked for and visible, else the host meter (logged once)."""
    if prefer_gpu:
        try:
            return NvmlMeter.open(gpu_index)
        except Exception as e:  # NVML raises its own error family, or the library is missing
            log.warning("NVML not usable (%s); measuring host memory instead", e)
    return HostMeter()


def self_rss_bytes() -> int:
    """Resident set of the calling process, cheaply (used inside the worker while sampling)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return psutil.Process().memory_info().rss
