"""The worker's park and un-park (``modelhost.worker_child``: ``op_park``, ``op_unpark``) in-process, against the
fake NVML: a backend double "allocates" its weights on the fake device and, parked, hands them to host memory,
while the worker's real code measures what the device gave back. A worker left with only parked models holds no
device memory for them (no CUDA context here: the fake stands in for the card, not for torch)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from modelhost.catalog import ModelSpec
from modelhost.worker import WorkerError
from modelhost.worker_child import _Child
from tests.doubles.fake_cuda import hide_libcuda
from tests.doubles.fake_nvml import one_gpu
from tests.doubles.gpu_memory_backend import GpuMemoryHog

pytestmark = pytest.mark.unit

GiB = 2**30


class ParkingHog(GpuMemoryHog):
    """GpuMemoryHog whose weights can be parked: off the fake device into "host memory", and back."""

    can_park = True

    def park(self) -> int:
        held, self._parked = self._held, self._held
        self._add(-held)
        self._held = 0
        return held

    def unpark(self) -> None:
        self._add(self._parked)
        self._held, self._parked = self._parked, 0


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    hide_libcuda(monkeypatch)
    fake = one_gpu()  # another tenant holds 3 GiB of the card
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def load(child: _Child, tmp_path: Path, model: str, backend: str = f"{__name__}:ParkingHog", **options: object) -> None:
    spec = ModelSpec(id=model, family="f", backend="hog", source="none", device="cuda:0", options=options)
    child.op_load({"spec": spec.model_dump(), "backend_path": backend, "cache_dir": str(tmp_path)})


def test_a_worker_with_only_parked_models_holds_no_device_memory(nvml, tmp_path: Path) -> None:  # noqa: ANN001
    child = _Child(None, 0)
    load(child, tmp_path, "a", weights_bytes=2 * GiB)
    load(child, tmp_path, "b", weights_bytes=GiB)
    assert nvml.gpus[0].processes == {os.getpid(): 3 * GiB}
    assert child.op_park({"model": "b"}) | {"park_s": 0} == {"freed_bytes": GiB, "host_bytes": GiB, "park_s": 0}
    assert child.op_park({"model": "a"})["freed_bytes"] == 2 * GiB
    assert nvml.gpus[0].processes == {} and nvml.gpus[0].used_bytes == 3 * GiB  # the other tenant's alone
    assert sorted(child.models) == ["a", "b"]  # both still in the worker, parked


def test_an_unpark_copies_the_weights_back_and_warms_up(nvml, tmp_path: Path) -> None:  # noqa: ANN001
    child = _Child(None, 0)
    load(child, tmp_path, "a", weights_bytes=2 * GiB)
    child.op_park({"model": "a"})
    reply = child.op_unpark({"model": "a"})
    assert reply["unpark_s"] >= 0 and reply["warmup_s"] >= 0
    assert nvml.gpus[0].processes == {os.getpid(): 2 * GiB}
    assert child.op_infer({"model": "a", "items": [1]})["outcomes"][0].value == 1


def test_a_backend_that_cannot_park_is_refused_by_the_worker(nvml, tmp_path: Path) -> None:  # noqa: ANN001
    child = _Child(None, 0)
    load(child, tmp_path, "a", backend="tests.doubles.gpu_memory_backend:GpuMemoryHog", weights_bytes=GiB)
    with pytest.raises(WorkerError, match="cannot park"):
        child.op_park({"model": "a"})
    assert nvml.gpus[0].processes == {os.getpid(): GiB}  # untouched
