"""Memory meters: what a model really uses on its device.

``NvmlMeter`` reads one GPU through NVML: the whole device's used bytes, and the bytes of one
process where the driver reports them. ``HostMeter`` is used where no GPU is visible: "device
memory" is then host memory, read as the resident set of a process. Both answer the same two
questions, so the same runtime code runs and is tested on CPU.

``NvmlMeter`` watches the card the model is on: it is opened for a CUDA device (``cuda:N``, as the
catalog names it) and maps that to NVML's device by PCI bus id (``modelhost.cuda``), since NVML
and CUDA number GPUs differently on a box with more than one.

The worker measures itself with ``MemoryReading``s (its own bytes, and the device's), and turns
three of them into a footprint with ``load_footprint`` — on one basis, never mixing a device-wide
reading before the load with a per-process one after it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import psutil

from .cuda import resolve_cuda_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    total_bytes: int
    used_bytes: int

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


class MeterError(RuntimeError):
    """The meter cannot read its device (the GPU is lost, the driver stopped answering)."""


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


@dataclass(frozen=True)
class MemoryReading:
    """What a worker reads about itself at one moment.

    ``process_bytes``: its own bytes on the device — NVML's per-process figure on a GPU (None where
    the driver does not list this pid: no CUDA context yet, a container's own pid namespace, or a
    driver that says "not available"), the resident set on the host. ``device_used_bytes``: the
    whole GPU's used bytes (None on the host)."""

    process_bytes: int | None
    device_used_bytes: int | None = None

    def max(self, other: "MemoryReading") -> "MemoryReading":
        def hi(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else max(a, b)

        return MemoryReading(hi(self.process_bytes, other.process_bytes), hi(self.device_used_bytes, other.device_used_bytes))

    @property
    def bytes(self) -> int:
        """One number: its own bytes where known, else the device's."""
        if self.process_bytes is not None:
            return self.process_bytes
        return self.device_used_bytes or 0


@dataclass(frozen=True)
class Footprint:
    memory_bytes: int  # resident after the warm-up
    peak_memory_bytes: int  # the peak during the load and the warm-up
    basis: str  # "process" (its own bytes) or "device" (the device's used bytes: others' changes included)


def load_footprint(before: MemoryReading, peak: MemoryReading, after: MemoryReading) -> Footprint:
    """A load's footprint from the readings before it, the peak during it, and after the warm-up.

    One basis for all three: the process's own bytes when the driver lists the process after the
    load (before the load it may not be listed yet, having no CUDA context: that is 0 on the
    device), else the device's used bytes. Mixing them (device-wide before, per-process after) made
    a first load on a busy GPU measure 0."""
    if after.process_bytes is not None:
        b = before.process_bytes or 0
        p = after.process_bytes if peak.process_bytes is None else max(peak.process_bytes, after.process_bytes)
        return Footprint(max(0, after.process_bytes - b), max(0, p - b), "process")
    if after.device_used_bytes is not None and before.device_used_bytes is not None:
        b = before.device_used_bytes
        p = max(peak.device_used_bytes or 0, after.device_used_bytes)
        return Footprint(max(0, after.device_used_bytes - b), max(0, p - b), "device")
    return Footprint(0, 0, "none")


def released_bytes(before: MemoryReading, after: MemoryReading) -> int:
    """What an unload gave back, on the same basis as ``load_footprint``."""
    if before.process_bytes is not None:
        return max(0, before.process_bytes - (after.process_bytes or 0))
    if before.device_used_bytes is not None and after.device_used_bytes is not None:
        return max(0, before.device_used_bytes - after.device_used_bytes)
    return 0


class NvmlMeter:
    """One GPU through NVML. Construct with ``NvmlMeter.open(cuda_index)``; it raises when NVML or the
    device is not there."""

    kind = "nvml"

    def __init__(self, pynvml_module: Any, handle: Any, index: int, *, nvml_index: int | None = None,
                 how: str = "given") -> None:
        self._nvml = pynvml_module
        self._handle = handle
        self.index = index  # CUDA's ordinal: the N of cuda:N
        self.nvml_index = index if nvml_index is None else nvml_index
        self.how = how  # how cuda:N was matched to NVML's device

    @classmethod
    def open(cls, index: int = 0, *, driver: Any = None, environ: Mapping[str, str] | None = None) -> "NvmlMeter":
        """The meter of ``cuda:index`` as CUDA numbers it in this process (see ``modelhost.cuda``)."""
        import pynvml

        pynvml.nvmlInit()
        resolved = resolve_cuda_device(pynvml, index, driver=driver, environ=environ)
        handle = pynvml.nvmlDeviceGetHandleByIndex(resolved.nvml_index)
        if resolved.nvml_index != index or resolved.how == "guess":
            log.info("cuda:%d is NVML GPU %d (%s)", index, resolved.nvml_index, resolved.how)
        return cls(pynvml, handle, index, nvml_index=resolved.nvml_index, how=resolved.how)

    def device(self) -> DeviceMemory:
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError as e:
            raise MeterError(f"NVML cannot read cuda:{self.index} (NVML GPU {self.nvml_index}): {e}") from e
        return DeviceMemory(device=f"cuda:{self.index}", total_bytes=int(info.total), used_bytes=int(info.used))

    def _process_bytes(self, pids: set[int]) -> int | None:
        """Bytes the driver lists for ``pids`` on this GPU; None where it lists none of them, or says
        "not available" for one of them."""
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except self._nvml.NVMLError:
            return None
        mine = [p.usedGpuMemory for p in procs if p.pid in pids]
        if not mine or any(used is None for used in mine):
            return None
        return sum(int(used) for used in mine)

    def process_bytes(self, pid: int) -> int:
        pids = {pid}
        try:
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
        return self._process_bytes(pids) or 0

    def reading(self, pid: int) -> MemoryReading:
        """Process ``pid``'s own bytes (itself only: called often, while a model loads) and the device's."""
        return MemoryReading(self._process_bytes({pid}), self.device().used_bytes)


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
