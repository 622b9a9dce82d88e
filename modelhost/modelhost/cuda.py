"""What CUDA and the NVIDIA driver say about the GPUs, read without a framework.

Two questions, asked by the family services and the gateway at start:

* **Is the driver new enough?** An image says which CUDA runtime its wheels were built for in
  ``ROUNDHOUSE_CUDA_VERSION`` (e.g. ``12.8``). A service whose catalog asks for a GPU reads the
  driver's CUDA version from NVML; when the driver is older, it stops with a message that says
  what to do, instead of every model silently falling back to CPU (``check_cuda_driver``).
* **Which NVML device is ``cuda:N``?** The catalog names GPUs as CUDA does, but NVML numbers them
  in PCI bus order, and CUDA's default order is fastest first (``CUDA_DEVICE_ORDER``), narrowed by
  ``CUDA_VISIBLE_DEVICES``. On a box with an RTX 3090 and a Quadro P2000, ``cuda:0`` is the 3090
  while NVML's index 0 may be the P2000: a meter that took the index as is would watch the wrong
  card, and every footprint and release check would read the other GPU. ``nvml_device_for_cuda``
  maps by PCI bus id: exactly, from the CUDA driver itself (``libcuda``, which applies both
  variables as the frameworks will; ``cuInit`` creates no context and takes no device memory),
  or, where ``libcuda`` is absent (a container given NVML only), from the two variables — exact
  with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or one visible GPU, else a guess (newest compute
  capability, then most cores) that is logged as one.

``nvml`` and ``driver`` are the hardware boundary: the real ``pynvml`` module and ``libcuda``
(through ctypes) unless a caller passes its own; tests pass doubles (``tests/doubles``).
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .catalog import Catalog

log = logging.getLogger(__name__)


class DriverTooOld(RuntimeError):
    pass


class NoSuchGpu(LookupError):
    """``cuda:N`` names no GPU that CUDA would give this process."""


def _parse(version: str) -> tuple[int, int]:
    major, _, minor = version.strip().partition(".")
    return int(major), int(minor or 0)


def driver_cuda_version(nvml: Any = None) -> tuple[int, int] | None:
    """The newest CUDA version the installed driver supports, or None without NVML."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        v = int(nvml.nvmlSystemGetCudaDriverVersion_v2())
    except Exception:  # no library, no driver, no device: not a GPU host
        return None
    return v // 1000, (v % 1000) // 10


def check_cuda_driver(service: str, catalog: Catalog, *, built_for: str | None = None, nvml: Any = None) -> None:
    built_for = built_for if built_for is not None else os.environ.get("ROUNDHOUSE_CUDA_VERSION")
    if not built_for or not any(m.wants_gpu for m in catalog.models):
        return
    need = _parse(built_for)
    have = driver_cuda_version(nvml)
    if have is None:
        log.warning("%s: the catalog asks for a GPU but NVML sees no NVIDIA driver; those models will fail to "
                    "load unless they allow a CPU fallback (use compose.cpu.yml on a host without a GPU)", service)
        return
    if have < need:
        raise DriverTooOld(
            f"{service}: this image is built for CUDA {need[0]}.{need[1]}, but the NVIDIA driver supports only "
            f"CUDA {have[0]}.{have[1]}. Update the driver (CUDA {need[0]}.{need[1]} needs a newer one), "
            "or build the image for an older CUDA (see the Dockerfile's build arguments)."
        )
    log.info("%s: NVIDIA driver supports CUDA %d.%d; image built for %d.%d", service, *have, *need)


# --- cuda:N -> NVML device ----------------------------------------------------------------------

PciKey = tuple[int, int, int, int]  # domain, bus, device, function


def pci_key(bus_id: str | bytes) -> PciKey:
    """A PCI bus id in NVML's (``00000000:41:00.0``) or CUDA's (``0000:41:00.0``) spelling, comparable."""
    text = bus_id.decode() if isinstance(bus_id, bytes) else bus_id
    head, _, function = text.strip().rstrip("\x00").partition(".")
    parts = [int(p, 16) for p in head.split(":")]
    domain, bus, device = ([0] * (3 - len(parts)) + parts)[-3:]
    return domain, bus, device, int(function or "0", 16)


@dataclass(frozen=True)
class NvmlGpu:
    """One GPU as NVML lists it (``index`` is NVML's, in PCI bus order)."""

    index: int
    uuid: str
    pci: PciKey
    compute_capability: tuple[int, int]
    cores: int  # 0 where NVML does not say


@dataclass(frozen=True)
class Resolved:
    nvml_index: int
    how: str  # "libcuda", "pci order", "only gpu", "uuid", "guess": how sure the mapping is


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _optional(read: Any, default: Any) -> Any:
    """A reading only the fastest-first guess uses: a board or driver that does not answer it ranks last."""
    try:
        return read()
    except Exception:  # NVML's Not Supported / Function Not Found
        return default


def nvml_gpus(nvml: Any) -> list[NvmlGpu]:
    """Every GPU NVML sees (NVML initialised by the caller)."""
    gpus = []
    for i in range(nvml.nvmlDeviceGetCount()):
        h = nvml.nvmlDeviceGetHandleByIndex(i)
        gpus.append(NvmlGpu(i, _text(nvml.nvmlDeviceGetUUID(h)), pci_key(nvml.nvmlDeviceGetPciInfo(h).busId),
                            _optional(lambda: tuple(nvml.nvmlDeviceGetCudaComputeCapability(h)), (0, 0)),
                            _optional(lambda: int(nvml.nvmlDeviceGetNumGpuCores(h)), 0)))
    return gpus


def cuda_pci_bus_ids(driver: Any = None) -> list[str] | None:
    """The PCI bus id of each device CUDA gives this process, in CUDA's order (``CUDA_VISIBLE_DEVICES``
    and ``CUDA_DEVICE_ORDER`` applied by the driver itself); None where ``libcuda`` cannot be loaded."""
    if driver is None:
        try:
            driver = ctypes.CDLL("libcuda.so.1")
        except OSError:
            return None
    rc = driver.cuInit(0)
    if rc == 100:  # CUDA_ERROR_NO_DEVICE: nothing visible (CUDA_VISIBLE_DEVICES="", say)
        return []
    if rc != 0:
        log.warning("libcuda's cuInit failed with error %d; mapping cuda:N to NVML from the environment", rc)
        return None
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return None
    ids = []
    for ordinal in range(count.value):
        dev = ctypes.c_int(0)
        buf = ctypes.create_string_buffer(32)
        if driver.cuDeviceGet(ctypes.byref(dev), ordinal) != 0 or driver.cuDeviceGetPCIBusId(buf, 32, dev) != 0:
            return None
        ids.append(buf.value.decode())
    return ids


def _cuda_order(gpus: list[NvmlGpu], order: str) -> list[NvmlGpu]:
    if order == "PCI_BUS_ID":
        return sorted(gpus, key=lambda g: g.pci)
    # FASTEST_FIRST (CUDA's default): the driver's heuristic is not published; newest architecture,
    # then most cores, is what it does on every mixed box we know of.
    return sorted(gpus, key=lambda g: (-g.compute_capability[0], -g.compute_capability[1], -g.cores, g.pci))


def _visible(ordered: list[NvmlGpu], entries: str) -> tuple[list[NvmlGpu], bool]:
    """CUDA_VISIBLE_DEVICES applied to CUDA's order: (the devices, whether any was named by UUID).
    Like CUDA, the list ends at the first entry that names no device."""
    out: list[NvmlGpu] = []
    by_uuid = False
    for raw in entries.split(","):
        entry = raw.strip()
        if entry.isdigit() and int(entry) < len(ordered):
            gpu = ordered[int(entry)]
        elif entry.startswith("GPU-") and sum(g.uuid.startswith(entry) for g in ordered) == 1:
            gpu, by_uuid = next(g for g in ordered if g.uuid.startswith(entry)), True
        else:
            if entry.startswith("MIG-"):
                log.warning("CUDA_VISIBLE_DEVICES names a MIG instance (%s); NVML meters watch whole GPUs", entry)
            break
        if gpu in out:
            break
        out.append(gpu)
    return out, by_uuid


def nvml_device_for_cuda(ordinal: int, gpus: list[NvmlGpu], *, cuda_bus_ids: list[str] | None,
                         environ: Mapping[str, str]) -> Resolved:
    """Which of NVML's ``gpus`` CUDA calls ``cuda:ordinal`` in a process with ``environ``."""
    if cuda_bus_ids is not None:
        if ordinal >= len(cuda_bus_ids):
            raise NoSuchGpu(f"cuda:{ordinal} does not exist: CUDA sees {len(cuda_bus_ids)} GPU(s) here")
        want = pci_key(cuda_bus_ids[ordinal])
        for g in gpus:
            if g.pci == want:
                return Resolved(g.index, "libcuda")
        raise NoSuchGpu(f"cuda:{ordinal} is the GPU at PCI {cuda_bus_ids[ordinal]}, which NVML does not list")
    order = environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST").strip().upper() or "FASTEST_FIRST"
    ordered = _cuda_order(gpus, order)
    entries = environ.get("CUDA_VISIBLE_DEVICES")
    visible, by_uuid = _visible(ordered, entries) if entries is not None else (ordered, False)
    if ordinal >= len(visible):
        raise NoSuchGpu(f"cuda:{ordinal} does not exist: {len(visible)} GPU(s) visible to CUDA here "
                        f"(CUDA_VISIBLE_DEVICES={entries!r})" if entries is not None else
                        f"cuda:{ordinal} does not exist: NVML lists {len(gpus)} GPU(s)")
    gpu = visible[ordinal]
    if len(gpus) == 1:
        how = "only gpu"
    elif by_uuid and entries is not None and entries.split(",")[ordinal].strip().startswith("GPU-"):
        how = "uuid"
    elif order == "PCI_BUS_ID":
        how = "pci order"
    else:
        how = "guess"
    return Resolved(gpu.index, how)


def resolve_cuda_device(nvml: Any, ordinal: int, *, driver: Any = None,
                        environ: Mapping[str, str] | None = None) -> Resolved:
    """``nvml_device_for_cuda`` for this process: NVML's devices, libcuda's answer where it loads."""
    resolved = nvml_device_for_cuda(ordinal, nvml_gpus(nvml), cuda_bus_ids=cuda_pci_bus_ids(driver),
                                    environ=os.environ if environ is None else environ)
    if resolved.how == "guess":
        log.warning("cuda:%d taken to be NVML GPU %d by guessing CUDA's fastest-first order (libcuda is not "
                    "loadable here); set CUDA_DEVICE_ORDER=PCI_BUS_ID for every process to make it exact",
                    ordinal, resolved.nvml_index)
    return resolved
