"""The coordinator's memory budget per device, and the NVML meters it checks releases with.

Both are read once, when the gateway starts. A catalog device ``cuda:N`` is named as CUDA numbers
GPUs; ``NvmlMeter.open`` finds the same card in NVML (by PCI bus id, see ``modelhost.cuda``), so
the budget comes from the total memory of the card the models will really be on.
"""

from __future__ import annotations

import logging

from modelhost.catalog import Catalog
from modelhost.meter import HostMeter, MemoryMeter, NvmlMeter

from .config import CoordinatorSettings
from .coordinator.loop import device_key

log = logging.getLogger(__name__)


def memory_budgets(catalog: Catalog, cs: CoordinatorSettings, meters: dict[str, MemoryMeter | None]) -> dict[str, int]:
    """One budget per device the catalog uses: configured, else NVML total minus the reserve on a
    GPU, else 75 % of host memory on the CPU. A GPU that NVML cannot see and that has no configured
    budget gets none: the coordinator lists its models as unavailable (the default catalog on a box
    without a GPU still serves its CPU models)."""
    budgets: dict[str, int] = {}
    for dev in sorted({device_key(m) for m in catalog.models}):
        if dev in cs.memory_budget_mb:
            budgets[dev] = cs.memory_budget_mb[dev] * 2**20
        elif dev == "cpu":
            budgets[dev] = int(HostMeter().device().total_bytes * 0.75)
        else:
            meter = meters.get(dev)
            if meter is None:
                log.warning("the catalog puts models on %s but NVML sees no such GPU: they are unavailable. To run "
                            "every model on the CPU set GATEWAY_FORCE_DEVICE=cpu and each service's "
                            "<FAMILY>_SVC_FORCE_DEVICE=cpu (make dev FORCE_DEVICE=cpu)", dev)
                continue
            budgets[dev] = max(0, meter.device().total_bytes - cs.gpu_reserve_mb * 2**20)
    return budgets


def open_meters(catalog: Catalog) -> dict[str, MemoryMeter | None]:
    """NVML meters for the GPUs the catalog names (None where NVML cannot see one)."""
    meters: dict[str, MemoryMeter | None] = {}
    for dev in sorted({device_key(m) for m in catalog.models}):
        if dev == "cpu":
            meters[dev] = None
            continue
        try:
            meters[dev] = NvmlMeter.open(int(dev.split(":")[1]))
        except Exception as e:  # NVML's error family, no library, or no such GPU
            log.warning("NVML cannot see %s (%s)", dev, e)
            meters[dev] = None
    return meters
