"""A stand-in for the ``pynvml`` module: the NVML hardware boundary, and nothing else.

``FakeNvml`` has the functions and constants of ``pynvml`` that the gateway's GPU collector calls,
answering from ``FakeGpu`` records a test can change between scrapes. ``supported`` names the
readings a board answers (real boards refuse power or utilisation sometimes); ``lost`` makes the
whole driver fail, as after an Xid error; ``init_error`` makes ``nvmlInit`` fail, as on a host with
no driver.

``install()`` puts one into ``sys.modules["pynvml"]``, for a gateway process started by a
proc-tier test on a machine without a GPU (``python -c "from tests.doubles.fake_nvml import
install; install(); ..."``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

ALL_READINGS = frozenset({"utilization", "temperature", "power"})


class NVMLError(Exception):
    pass


@dataclass
class FakeGpu:
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    utilization_pct: int = 0
    temperature_c: int = 40
    power_mw: int = 50_000
    supported: frozenset[str] = ALL_READINGS
    lost: bool = False  # this one device stops answering


@dataclass
class FakeNvml:
    gpus: list[FakeGpu] = field(default_factory=list)
    init_error: str | None = None
    lost: bool = False  # the driver stops answering altogether
    init_calls: int = 0

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        self.init_calls += 1
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._answering()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:  # noqa: N802
        self._answering()
        gpu = self.gpus[index]
        if gpu.lost:
            raise NVMLError("GPU is lost")
        return gpu

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:  # noqa: N802
        return gpu.uuid

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:  # noqa: N802 - older pynvml returns bytes
        return gpu.name.encode()

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        self._answering()
        return SimpleNamespace(total=gpu.total_bytes, used=gpu.used_bytes, free=gpu.total_bytes - gpu.used_bytes)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:  # noqa: N802
        self._supports(gpu, "utilization")
        return SimpleNamespace(gpu=gpu.utilization_pct, memory=0)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        self._supports(gpu, "temperature")
        return gpu.temperature_c

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:  # noqa: N802
        self._supports(gpu, "power")
        return gpu.power_mw

    def _answering(self) -> None:
        if self.lost:
            raise NVMLError("Driver Not Loaded")

    def _supports(self, gpu: FakeGpu, reading: str) -> None:
        self._answering()
        if reading not in gpu.supported:
            raise NVMLError("Not Supported")


def one_gpu() -> FakeNvml:
    return FakeNvml([FakeGpu("GPU-00000000-fake-0000-0000-000000000000", "Fake RTX 3060", 12 * 2**30, 3 * 2**30,
                             utilization_pct=42, temperature_c=61, power_mw=95_500)])


def install(nvml: FakeNvml | None = None) -> FakeNvml:
    nvml = nvml or one_gpu()
    sys.modules["pynvml"] = nvml  # type: ignore[assignment] - a module-shaped object
    return nvml
