"""The driver check at start: the NVML boundary is faked, the check is real."""

from __future__ import annotations

import pytest

from modelhost.catalog import Catalog, ModelSpec
from modelhost.cuda import DriverTooOld, check_cuda_driver

pytestmark = pytest.mark.unit


class FakeNvml:
    def __init__(self, cuda_version: int | None) -> None:
        self.v = cuda_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:  # noqa: N802 - NVML's name
        if self.v is None:
            raise RuntimeError("NVML Shared Library Not Found")
        return self.v


GPU = Catalog(models=[ModelSpec(id="m", family="f", backend="b", source="s", device="cuda:0")])
CPU = Catalog(models=[ModelSpec(id="m", family="f", backend="b", source="s", device="cpu")])


def test_a_driver_older_than_the_image_stops_the_service_with_what_to_do() -> None:
    with pytest.raises(DriverTooOld, match="built for CUDA 12.8.*only CUDA 12.2.*Update the driver"):
        check_cuda_driver("caption-svc", GPU, built_for="12.8", nvml=FakeNvml(12020))


@pytest.mark.parametrize("driver", [12080, 12090, 13000])
def test_a_driver_as_new_or_newer_passes(driver: int) -> None:
    check_cuda_driver("caption-svc", GPU, built_for="12.8", nvml=FakeNvml(driver))


def test_no_check_without_gpu_models_or_without_a_driver() -> None:
    check_cuda_driver("caption-svc", CPU, built_for="12.8", nvml=FakeNvml(11000))  # CPU catalog: not asked
    check_cuda_driver("caption-svc", GPU, built_for="12.8", nvml=FakeNvml(None))  # no driver: models fail honestly later
    check_cuda_driver("caption-svc", GPU, built_for="", nvml=FakeNvml(11000))  # a local, non-image run
