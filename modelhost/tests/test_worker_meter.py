"""The worker's own meter (``modelhost.worker_child``: the sampler and the child meter) in-process,
against the fake NVML: a backend double "allocates" device memory on the fake while the worker's
real load, sampling and unload code measures it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from modelhost.catalog import ModelSpec
from modelhost.worker_child import _Child
from tests.doubles.fake_cuda import hide_libcuda
from tests.doubles.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, FakeNvml, one_gpu, seeds_box

pytestmark = pytest.mark.unit

GiB, MiB = 2**30, 2**20
HOG = "tests.doubles.gpu_memory_backend:GpuMemoryHog"


@pytest.fixture(autouse=True)
def no_libcuda(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_libcuda(monkeypatch)


def install(monkeypatch: pytest.MonkeyPatch, nvml: FakeNvml) -> FakeNvml:
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def load(child: _Child, tmp_path: Path, model: str = "m", **options: object):  # noqa: ANN201
    spec = ModelSpec(id=model, family="f", backend="hog", source="none", device="cuda:0", options=options)
    return child.op_load({"spec": spec.model_dump(), "backend_path": HOG, "cache_dir": str(tmp_path)})


def test_a_first_load_on_a_busy_gpu_measures_the_models_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = install(monkeypatch, one_gpu())  # another tenant holds 3 GiB; this worker has no context yet
    m = load(_Child(None, 0), tmp_path, weights_bytes=2 * GiB)
    assert (m.memory_bytes, m.peak_memory_bytes) == (2 * GiB, 2 * GiB)
    assert nvml.gpus[0].processes == {os.getpid(): 2 * GiB}


def test_the_warm_up_peak_is_sampled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())
    m = load(_Child(None, 0), tmp_path, weights_bytes=2 * GiB, warmup_bytes=512 * MiB)
    assert (m.memory_bytes, m.peak_memory_bytes) == (2 * GiB, 2 * GiB + 512 * MiB)


def test_where_the_driver_does_not_list_the_worker_the_device_delta_is_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, one_gpu())  # a container's own pid namespace: NVML lists host pids
    m = load(_Child(None, 0), tmp_path, weights_bytes=GiB, warmup_bytes=256 * MiB, per_process=False)
    assert (m.memory_bytes, m.peak_memory_bytes) == (GiB, GiB + 256 * MiB)


def test_the_worker_measures_the_card_its_model_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = install(monkeypatch, seeds_box())  # cuda:0 is the RTX 3090, NVML's GPU 1
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml.gpus[0].processes = {os.getpid(): 100 * MiB}  # something of ours on the P2000: not this model
    m = load(_Child(None, 0), tmp_path, nvml_index=1, weights_bytes=3 * GiB, per_process=False)
    assert m.peak_memory_bytes == 3 * GiB
    nvml.gpus[1].used_bytes -= 3 * GiB
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # now cuda:0 is the P2000, NVML's GPU 0
    m = load(_Child(None, 0), tmp_path, nvml_index=0, weights_bytes=GiB)
    assert m.peak_memory_bytes == GiB


def test_an_unload_reports_what_the_model_gave_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = install(monkeypatch, one_gpu())
    child = _Child(None, 0)
    load(child, tmp_path, "a", weights_bytes=2 * GiB)
    load(child, tmp_path, "b", weights_bytes=GiB)
    assert child.op_memory({}) == {"bytes": 3 * GiB, "models": ["a", "b"]}
    assert child.op_unload({"model": "b"}) == {"freed_bytes": GiB, "was_loaded": True}
    assert child.op_unload({"model": "a"}) == {"freed_bytes": 2 * GiB, "was_loaded": True}
    assert nvml.gpus[0].used_bytes == 3 * GiB and nvml.gpus[0].processes == {}


def test_a_lost_gpu_fails_a_load_and_does_not_keep_a_model_from_unloading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelhost.worker import WorkerError

    nvml = install(monkeypatch, one_gpu())
    child = _Child(None, 0)
    load(child, tmp_path, "a", weights_bytes=GiB)
    nvml.gpus[0].lost = True
    with pytest.raises(WorkerError, match="GPU is lost") as e:
        load(child, tmp_path, "b", weights_bytes=GiB)
    assert e.value.kind == "load_failed" and "b" not in child.models
    assert child.op_unload({"model": "a"}) == {"freed_bytes": 0, "was_loaded": True}  # not measured, but gone
    assert child.models == {}
    nvml.gpus[0].lost = False
    assert load(child, tmp_path, "c", weights_bytes=GiB).peak_memory_bytes == GiB


def test_without_nvml_the_worker_measures_its_resident_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, FakeNvml([FakeGpu("GPU-x", "X", 8 * GiB)], init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    child = _Child(None, 0)
    assert child.meter.kind == "host"
    assert child.op_memory({})["bytes"] > 10 * MiB  # this Python process's RSS


# --- the service's own meter of its worker (app: create_host_app, a real worker process) -----------


@pytest.mark.app
async def test_the_last_unload_reports_the_bytes_nvml_listed_for_the_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from modelhost.app import Family, create_host_app
    from modelhost.catalog import Catalog
    from modelhost.settings import HostSettings

    nvml = install(monkeypatch, one_gpu())  # the service's process; its worker child measures its host memory
    family = Family(name="arith", service="arith-svc", backends={"arith": "tests.doubles.arithmetic:ArithmeticBackend"})
    catalog = Catalog(models=[ModelSpec(id="a", family="arith", backend="arith", source="none", device="cuda:0",
                                        allow_cpu_fallback=True)])
    app = create_host_app(family, HostSettings(cache_dir=tmp_path), catalog)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
            assert (await c.post("/v1/models/a/load")).status_code == 200
            worker = (await c.get("/v1/models")).json()["worker_pid"]
            nvml.gpus[0].processes = {worker: 1536 * MiB, 424242: GiB}  # the worker, and someone else
            assert (await c.get("/v1/models")).json()["worker_memory_bytes"] == 1536 * MiB
            reply = (await c.post("/v1/models/a/unload")).json()
    assert reply["worker_stopped"] and reply["freed_bytes"] == 1536 * MiB
