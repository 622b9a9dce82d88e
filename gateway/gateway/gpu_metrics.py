"""GPU metrics read from NVML at scrape time: a Prometheus custom collector the gateway registers.

Every scrape asks NVML afresh (a handful of calls per GPU, well under a millisecond each), so the
numbers are the device's truth at that moment, not a cached copy. Labels: ``gpu`` (NVML index),
``uuid`` and ``name``. Units are base units: bytes, a 0-1 ratio, degrees Celsius, watts.

When NVML is absent (no library, no driver, no GPU) the collector exports only
``roundhouse_gpu_nvml_available 0`` and tries to initialise again at most every ``retry_s``; a
reading a device does not support (power on some boards, utilisation under MIG) is left out for
that device while the others are exported.

``nvml`` is the hardware boundary: the real ``pynvml`` module (imported lazily) or, in tests, an
object with the same functions.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LABELS = ["gpu", "uuid", "name"]

# name -> help text; the order is the exposition order.
GAUGES = {
    "roundhouse_gpu_memory_used_bytes": "Device memory in use on the GPU (every process), from NVML.",
    "roundhouse_gpu_memory_total_bytes": "Device memory of the GPU, from NVML.",
    "roundhouse_gpu_utilization_ratio": "Fraction of the last sample period in which a kernel ran on the GPU (0-1), from NVML.",
    "roundhouse_gpu_temperature_celsius": "GPU core temperature, from NVML.",
    "roundhouse_gpu_power_watts": "GPU board power draw, from NVML.",
}
AVAILABLE = "roundhouse_gpu_nvml_available"
AVAILABLE_HELP = "1 when NVML answered this scrape, 0 when it is absent or failing (then no other roundhouse_gpu_ metric is exported)."


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class GpuCollector(Collector):
    def __init__(self, nvml: Any = None, *, retry_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._given = nvml
        self._nvml: Any = None  # the module once nvmlInit succeeded
        self._retry_s = retry_s
        self._clock = clock
        self._next_try = float("-inf")
        self._warned: set[str] = set()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so registering never touches NVML.
        yield GaugeMetricFamily(AVAILABLE, AVAILABLE_HELP)
        for name, doc in GAUGES.items():
            yield GaugeMetricFamily(name, doc, labels=LABELS)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        available = GaugeMetricFamily(AVAILABLE, AVAILABLE_HELP)
        nvml = self._initialised()
        families = None
        if nvml is not None:
            try:
                families = self._read(nvml)
            except nvml.NVMLError as e:  # the driver went away: nothing answers any more
                self._lost(f"NVML failed while counting the GPUs ({e}); GPU metrics stop until it answers again")
        available.add_metric([], 1 if families is not None else 0)
        yield available
        if families is not None:
            yield from families

    # NVML ----------------------------------------------------------------------------------------

    def _initialised(self) -> Any:
        if self._nvml is not None:
            return self._nvml
        now = self._clock()
        if now < self._next_try:
            return None
        self._next_try = now + self._retry_s
        try:
            nvml = self._given
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
        except Exception as e:  # ImportError, or NVML's own error family (no library, no driver)
            self._warn_once("init", f"NVML is not available ({e}); exporting {AVAILABLE} 0 only")
            return None
        self._nvml = nvml
        self._warned.discard("init")
        return nvml

    def _lost(self, message: str) -> None:
        log.warning(message)
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # already gone; shutting down is best effort
            pass
        self._nvml = None
        self._next_try = self._clock() + self._retry_s

    def _read(self, nvml: Any) -> list[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(name, doc, labels=LABELS) for name, doc in GAUGES.items()}
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                labels = [str(index), _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle))]
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError as e:  # this GPU is lost or busy resetting: skip it, keep the others
                self._warn_once(f"device:{index}", f"GPU {index} does not answer NVML ({e}); left out")
                continue
            self._warned.discard(f"device:{index}")
            families["roundhouse_gpu_memory_used_bytes"].add_metric(labels, float(memory.used))
            families["roundhouse_gpu_memory_total_bytes"].add_metric(labels, float(memory.total))
            readings = {
                "roundhouse_gpu_utilization_ratio": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                "roundhouse_gpu_temperature_celsius": lambda: float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                "roundhouse_gpu_power_watts": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # milliwatts
            }
            for name, read in readings.items():
                try:
                    families[name].add_metric(labels, read())
                except nvml.NVMLError as e:  # not supported on this board: leave this one reading out
                    self._warn_once(f"{name}:{index}", f"GPU {index}: {name} is not available ({e}); left out")
        return list(families.values())

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)
