"""A stand-in for ``libcuda.so.1`` as ``ctypes.CDLL`` exposes it: the CUDA driver's boundary.

``modelhost.cuda.cuda_pci_bus_ids`` asks the driver for the PCI bus id of each device, in the order
CUDA gives them to this process (``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` applied by the
driver). The double states that order (``bus_ids``, CUDA's spelling ``0000:41:00.0``) and answers the
four driver calls with ctypes arguments and ``CUresult`` codes, as the real library does.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass, field

CUDA_SUCCESS = 0
CUDA_ERROR_INVALID_VALUE = 1
CUDA_ERROR_NOT_INITIALIZED = 3
CUDA_ERROR_NO_DEVICE = 100
CUDA_ERROR_INVALID_DEVICE = 101


@dataclass
class FakeLibcuda:
    bus_ids: list[str] = field(default_factory=list)  # one per CUDA ordinal, in CUDA's order
    init_result: int = CUDA_SUCCESS  # what cuInit answers (100: no device visible)
    calls: Counter = field(default_factory=Counter)
    _initialised: bool = False

    def cuInit(self, flags: int) -> int:  # noqa: N802 - the driver's names
        self.calls["cuInit"] += 1
        assert flags == 0, "cuInit takes flags 0"
        if self.init_result == CUDA_SUCCESS:
            self._initialised = True
        return self.init_result

    def cuDeviceGetCount(self, count_ref) -> int:  # noqa: N802, ANN001 - a ctypes byref
        self.calls["cuDeviceGetCount"] += 1
        if not self._initialised:
            return CUDA_ERROR_NOT_INITIALIZED
        count_ref._obj.value = len(self.bus_ids)
        return CUDA_SUCCESS

    def cuDeviceGet(self, device_ref, ordinal: int) -> int:  # noqa: N802, ANN001
        self.calls["cuDeviceGet"] += 1
        if not self._initialised:
            return CUDA_ERROR_NOT_INITIALIZED
        if not 0 <= ordinal < len(self.bus_ids):
            return CUDA_ERROR_INVALID_DEVICE
        device_ref._obj.value = ordinal
        return CUDA_SUCCESS

    def cuDeviceGetPCIBusId(self, buf, length: int, device: ctypes.c_int) -> int:  # noqa: N802, ANN001
        self.calls["cuDeviceGetPCIBusId"] += 1
        if not self._initialised:
            return CUDA_ERROR_NOT_INITIALIZED
        text = self.bus_ids[device.value].encode()
        if len(text) + 1 > length:
            return CUDA_ERROR_INVALID_VALUE
        buf.value = text
        return CUDA_SUCCESS


def hide_libcuda(monkeypatch) -> None:  # noqa: ANN001 - a pytest MonkeyPatch
    """Make ``libcuda.so.1`` unloadable for this test, as on a host (or container) without the CUDA
    driver, so a test that pairs the fake NVML with "no libcuda" means the same on a GPU machine."""
    real = ctypes.CDLL

    def cdll(name, *args, **kwargs):  # noqa: ANN001, ANN202
        if str(name).startswith("libcuda"):
            raise OSError(f"{name}: cannot open shared object file (hidden by the test)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(ctypes, "CDLL", cdll)
