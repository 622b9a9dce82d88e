"""A stand-in for the ``pynvml`` module: the NVML hardware boundary, and nothing else.

``FakeNvml`` has the functions, constants and error classes of ``pynvml`` (nvidia-ml-py 12/13) that
Roundhouse calls, answering from ``FakeGpu`` records that a test scripts and changes as it goes:

- the devices: how many, their names, UUIDs, PCI bus ids (NVML enumerates in PCI order; CUDA, by
  default, fastest first), compute capability and core count;
- memory: ``total_bytes`` and ``used_bytes`` (free is the difference), changed by the test between
  calls, or scripted per read (``script_used``: one value per ``nvmlDeviceGetMemoryInfo``, the last
  one repeating) or by a hook (``on_memory_read``) for memory that changes over time;
- per-process memory (``processes``: pid -> bytes, ``None`` where the driver says "not available",
  as under WDDM or without permission);
- the driver: ``driver_version`` and ``cuda_driver_version`` (NVML's integer, 12080 = CUDA 12.8);
- errors: ``init_error`` (no library, no driver), ``lost`` (the driver stops answering, as after an
  Xid error), ``FakeGpu.lost`` (one GPU is lost), ``supported`` (the readings a board answers), and
  ``fail`` (function name -> NVML error code, raised by that function until removed).

Errors are raised as pynvml does: ``NVMLError(code)`` is an instance of the subclass for that code
(``NVMLError_GpuIsLost`` ...), with ``.value``. Like the real library, every call but ``nvmlInit``
needs NVML initialised (``nvmlInit`` and ``nvmlShutdown`` are counted, as the driver counts them).
``calls`` counts every call by function name, so a test can tell how often something polled.

``install()`` puts one into ``sys.modules["pynvml"]`` (a test uses ``monkeypatch.setitem`` instead);
for processes started by a test, ``tests/doubles/pynvml_shim/pynvml.py`` builds one from a JSON
description (``fake_nvml_host.py``).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

ALL_READINGS = frozenset({"utilization", "temperature", "power", "processes"})

# pynvml's return codes (nvml.h), the ones Roundhouse can meet.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

_MESSAGES = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """pynvml's error: ``NVMLError(code)`` returns an instance of that code's subclass."""

    _by_value: dict[int, type] = {}

    def __new__(cls, value: int, message: str | None = None):  # noqa: ANN204 - as pynvml
        if cls is NVMLError:
            cls = NVMLError._by_value.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        obj._message = message
        return obj

    def __init__(self, *args: object) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return self._message or _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


def _subclass(name: str, value: int) -> type:
    cls = type(name, (NVMLError,), {"__new__": lambda c, *a: NVMLError.__new__(c, value, *a[1:])})
    NVMLError._by_value[value] = cls
    return cls


NVMLError_Uninitialized = _subclass("NVMLError_Uninitialized", NVML_ERROR_UNINITIALIZED)
NVMLError_InvalidArgument = _subclass("NVMLError_InvalidArgument", NVML_ERROR_INVALID_ARGUMENT)
NVMLError_NotSupported = _subclass("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_NoPermission = _subclass("NVMLError_NoPermission", NVML_ERROR_NO_PERMISSION)
NVMLError_NotFound = _subclass("NVMLError_NotFound", NVML_ERROR_NOT_FOUND)
NVMLError_DriverNotLoaded = _subclass("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _subclass("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)
NVMLError_FunctionNotFound = _subclass("NVMLError_FunctionNotFound", NVML_ERROR_FUNCTION_NOT_FOUND)
NVMLError_GpuIsLost = _subclass("NVMLError_GpuIsLost", NVML_ERROR_GPU_IS_LOST)
NVMLError_Unknown = _subclass("NVMLError_Unknown", NVML_ERROR_UNKNOWN)


def _error(reason: int | str) -> NVMLError:
    """An error from a code, or from a message (a known message gets its code; others are Unknown)."""
    if isinstance(reason, int):
        return NVMLError(reason)
    code = next((c for c, m in _MESSAGES.items() if m == reason), NVML_ERROR_UNKNOWN)
    return NVMLError(code, reason)


@dataclass
class FakeGpu:
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int = 0
    utilization_pct: int = 0
    temperature_c: int = 40
    power_mw: int = 50_000
    supported: frozenset[str] = ALL_READINGS
    lost: bool = False  # this one device stops answering
    pci_bus_id: str = "00000000:01:00.0"  # NVML's form: 8-digit domain
    compute_capability: tuple[int, int] = (8, 6)
    cores: int | None = None  # CUDA cores; None: nvmlDeviceGetNumGpuCores is not supported
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> used bytes (None: not available)
    script_used: list[int] = field(default_factory=list)  # one used_bytes per memory read; the last repeats
    on_memory_read: Callable[["FakeGpu"], None] | None = None  # called before each memory read
    memory_reads: int = 0

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    init_error: int | str | None = None  # nvmlInit fails with this (a code, or a message)
    lost: bool = False  # the driver stops answering altogether
    driver_version: str = "580.95.05"
    cuda_driver_version: int = 13000  # what nvmlSystemGetCudaDriverVersion_v2 answers (13.0)
    fail: dict[str, int] = field(default_factory=dict)  # function name -> NVML error code it raises
    init_calls: int = 0
    initialised: int = 0  # nvmlInit minus nvmlShutdown, as the driver counts them
    calls: Counter = field(default_factory=Counter)

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_InvalidArgument = NVMLError_InvalidArgument
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost
    NVMLError_Unknown = NVMLError_Unknown
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NOT_FOUND = NVML_ERROR_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_DRIVER_NOT_LOADED = NVML_ERROR_DRIVER_NOT_LOADED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_TEMPERATURE_GPU = 0

    # library ------------------------------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.calls["nvmlInit"] += 1
        self.init_calls += 1
        if self.init_error is not None:
            raise _error(self.init_error)
        self._scripted("nvmlInit")
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._enter("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802
        self._enter("nvmlSystemGetCudaDriverVersion_v2")
        return self.cuda_driver_version

    nvmlSystemGetCudaDriverVersion = nvmlSystemGetCudaDriverVersion_v2

    # devices ------------------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self._device(self.gpus[index])

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str | bytes) -> FakeGpu:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByPciBusId")
        want = pci_key(bus_id)
        for gpu in self.gpus:
            if pci_key(gpu.pci_bus_id) == want:
                return self._device(gpu)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> FakeGpu:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByUUID")
        want = uuid.decode() if isinstance(uuid, bytes) else uuid
        for gpu in self.gpus:
            if gpu.uuid == want:
                return self._device(gpu)
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:  # noqa: N802
        return self._device(gpu, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:  # noqa: N802 - older pynvml returns bytes
        return self._device(gpu, "nvmlDeviceGetName").name.encode()

    def nvmlDeviceGetPciInfo(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        gpu = self._device(gpu, "nvmlDeviceGetPciInfo")
        domain, bus, device, _ = pci_key(gpu.pci_bus_id)
        bus_id = gpu.pci_bus_id.encode()  # a c_char array field reads as bytes
        return SimpleNamespace(busId=bus_id, busIdLegacy=bus_id, domain=domain, bus=bus, device=device)

    def nvmlDeviceGetCudaComputeCapability(self, gpu: FakeGpu) -> tuple[int, int]:  # noqa: N802
        return self._device(gpu, "nvmlDeviceGetCudaComputeCapability").compute_capability

    def nvmlDeviceGetNumGpuCores(self, gpu: FakeGpu) -> int:  # noqa: N802
        gpu = self._device(gpu, "nvmlDeviceGetNumGpuCores")
        if gpu.cores is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return gpu.cores

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        gpu = self._device(gpu, "nvmlDeviceGetMemoryInfo")
        gpu.memory_reads += 1
        if gpu.on_memory_read is not None:
            gpu.on_memory_read(gpu)
        if gpu.script_used:
            gpu.used_bytes = gpu.script_used.pop(0) if len(gpu.script_used) > 1 else gpu.script_used[0]
        return SimpleNamespace(total=gpu.total_bytes, used=gpu.used_bytes, free=gpu.free_bytes)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[SimpleNamespace]:  # noqa: N802
        gpu = self._device(gpu, "nvmlDeviceGetComputeRunningProcesses")
        self._supports(gpu, "processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for pid, used in gpu.processes.items()]

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        gpu = self._device(gpu, "nvmlDeviceGetUtilizationRates")
        self._supports(gpu, "utilization")
        return SimpleNamespace(gpu=gpu.utilization_pct, memory=0)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        gpu = self._device(gpu, "nvmlDeviceGetTemperature")
        self._supports(gpu, "temperature")
        return gpu.temperature_c

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:  # noqa: N802
        gpu = self._device(gpu, "nvmlDeviceGetPowerUsage")
        self._supports(gpu, "power")
        return gpu.power_mw

    # the double's own ---------------------------------------------------------------------------

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self.initialised <= 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if self.lost:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        self._scripted(name)

    def _scripted(self, name: str) -> None:
        if name in self.fail:
            raise NVMLError(self.fail[name])

    def _device(self, gpu: FakeGpu, name: str | None = None) -> FakeGpu:
        if name is not None:
            self._enter(name)
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return gpu

    def _supports(self, gpu: FakeGpu, reading: str) -> None:
        if reading not in gpu.supported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)


def pci_key(bus_id: str | bytes) -> tuple[int, int, int, int]:
    """(domain, bus, device, function) of a PCI bus id in NVML's or CUDA's spelling."""
    text = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
    head, _, function = text.strip().partition(".")
    parts = [int(p, 16) for p in head.split(":")]
    domain, bus, device = ([0] * (3 - len(parts)) + parts)[-3:]
    return domain, bus, device, int(function or "0", 16)


GiB = 2**30


def one_gpu() -> FakeNvml:
    return FakeNvml([FakeGpu("GPU-00000000-fake-0000-0000-000000000000", "Fake RTX 3060", 12 * GiB, 3 * GiB,
                             utilization_pct=42, temperature_c=61, power_mw=95_500)])


def seeds_box() -> FakeNvml:
    """The seeds' box: NVML (PCI order) lists the Quadro P2000 first, CUDA (fastest first) the RTX 3090."""
    return FakeNvml([
        FakeGpu("GPU-p2000000-0000-0000-0000-000000000000", "Quadro P2000", 5 * GiB, 300 * 2**20,
                pci_bus_id="00000000:01:00.0", compute_capability=(6, 1), cores=1024),
        FakeGpu("GPU-30900000-0000-0000-0000-000000000000", "NVIDIA GeForce RTX 3090", 24 * GiB, 500 * 2**20,
                pci_bus_id="00000000:41:00.0", compute_capability=(8, 6), cores=10496),
    ])


def install(nvml: FakeNvml | None = None) -> FakeNvml:
    nvml = nvml or one_gpu()
    sys.modules["pynvml"] = nvml  # type: ignore[assignment] - a module-shaped object
    return nvml
