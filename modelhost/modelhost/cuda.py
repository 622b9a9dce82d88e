"""Refuse to start on a driver too old for the image's CUDA stack, instead of silently running on CPU.

An image says which CUDA runtime its wheels were built for in ``ROUNDHOUSE_CUDA_VERSION``
(e.g. ``12.8``). At start, a service whose catalog asks for a GPU reads the driver's CUDA version
from NVML; when the driver is older, it stops with a message that says what to do.
"""

from __future__ import annotations

import logging
import os

from .catalog import Catalog

log = logging.getLogger(__name__)


class DriverTooOld(RuntimeError):
    pass


def _parse(version: str) -> tuple[int, int]:
    major, _, minor = version.strip().partition(".")
    return int(major), int(minor or 0)


def driver_cuda_version(nvml=None) -> tuple[int, int] | None:  # noqa: ANN001 - pynvml is untyped
    """The newest CUDA version the installed driver supports, or None without NVML."""
    try:
        if nvml is None:
            import pynvml as nvml

            nvml.nvmlInit()
        v = int(nvml.nvmlSystemGetCudaDriverVersion_v2())
    except Exception:  # no library, no driver, no device: not a GPU host
        return None
    return v // 1000, (v % 1000) // 10


def check_cuda_driver(service: str, catalog: Catalog, *, built_for: str | None = None, nvml=None) -> None:  # noqa: ANN001
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
