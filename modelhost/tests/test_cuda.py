"""The driver check at start: the NVML boundary is the fake NVML (tests/doubles), the check is real,
called directly (unit) and by a family service starting up (app)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from modelhost.app import Family, create_host_app
from modelhost.catalog import Catalog, ModelSpec
from modelhost.cuda import DriverTooOld, check_cuda_driver, driver_cuda_version
from modelhost.settings import HostSettings
from tests.doubles.fake_cuda import hide_libcuda
from tests.doubles.fake_nvml import NVML_ERROR_DRIVER_NOT_LOADED, FakeNvml, one_gpu

GPU = Catalog(models=[ModelSpec(id="m", family="f", backend="b", source="s", device="cuda:0")])
CPU = Catalog(models=[ModelSpec(id="m", family="f", backend="b", source="s", device="cpu")])


def driver(cuda_version: int) -> FakeNvml:
    nvml = one_gpu()
    nvml.cuda_driver_version = cuda_version
    return nvml


@pytest.mark.unit
def test_the_drivers_cuda_version_is_read_from_nvml_after_initialising_it() -> None:
    nvml = driver(12020)
    assert driver_cuda_version(nvml) == (12, 2)
    assert nvml.calls["nvmlInit"] == 1 and nvml.calls["nvmlSystemGetCudaDriverVersion_v2"] == 1
    assert driver_cuda_version(FakeNvml(init_error=NVML_ERROR_DRIVER_NOT_LOADED)) is None
    assert driver_cuda_version(driver(13010)) == (13, 1)


@pytest.mark.unit
def test_a_driver_older_than_the_image_stops_the_service_with_what_to_do() -> None:
    with pytest.raises(DriverTooOld, match="built for CUDA 12.8.*only CUDA 12.2.*Update the driver"):
        check_cuda_driver("caption-svc", GPU, built_for="12.8", nvml=driver(12020))


@pytest.mark.unit
@pytest.mark.parametrize("version", [12080, 12090, 13000])
def test_a_driver_as_new_or_newer_passes(version: int) -> None:
    check_cuda_driver("caption-svc", GPU, built_for="12.8", nvml=driver(version))


@pytest.mark.unit
def test_no_check_without_gpu_models_or_without_a_driver() -> None:
    check_cuda_driver("caption-svc", CPU, built_for="12.8", nvml=driver(11000))  # CPU catalog: not asked
    # no driver: models fail honestly later
    check_cuda_driver("caption-svc", GPU, built_for="12.8", nvml=FakeNvml(init_error=NVML_ERROR_DRIVER_NOT_LOADED))
    check_cuda_driver("caption-svc", GPU, built_for="", nvml=driver(11000))  # a local, non-image run


FAMILY = Family(name="arith", service="arith-svc", backends={"arith": "tests.doubles.arithmetic:ArithmeticBackend"})
ON_GPU = Catalog(models=[ModelSpec(id="a", family="arith", backend="arith", source="none", device="cuda:0")])


@pytest.mark.app
async def test_a_service_on_a_driver_too_old_for_its_image_does_not_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hide_libcuda(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", driver(12020))
    monkeypatch.setenv("ROUNDHOUSE_CUDA_VERSION", "12.8")
    app = create_host_app(FAMILY, HostSettings(cache_dir=tmp_path), ON_GPU)
    with pytest.raises(DriverTooOld, match="arith-svc: this image is built for CUDA 12.8"):
        async with app.router.lifespan_context(app):
            pass


@pytest.mark.app
async def test_a_service_on_a_new_enough_driver_starts_measuring_with_nvml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    hide_libcuda(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", driver(13000))
    monkeypatch.setenv("ROUNDHOUSE_CUDA_VERSION", "12.8")
    app = create_host_app(FAMILY, HostSettings(cache_dir=tmp_path), ON_GPU)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            body = (await c.get("/v1/models")).json()
    assert body["meter"] == "nvml"
    assert body["device"] == {"device": "cuda:0", "total_bytes": 12 * 2**30, "used_bytes": 3 * 2**30}
