"""The coordinator's budget per device and the meters it checks releases with (``gateway.budgets``),
against the fake NVML: unit, and the whole ``create_app()`` reading them at start (app)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from gateway.budgets import memory_budgets, open_meters
from gateway.config import CoordinatorSettings, GatewaySettings
from gateway.main import create_app
from modelhost.catalog import Catalog, ModelSpec
from modelhost.meter import HostMeter
from tests.doubles.fake_cuda import FakeLibcuda, hide_libcuda
from tests.doubles.fake_nvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml, seeds_box
from tests.procs import free_port

GiB, MiB = 2**30, 2**20
RESERVE = 768 * MiB


def catalog(*devices: str) -> Catalog:
    return Catalog(models=[ModelSpec(id=f"m{i}", family="caption", backend="blip", source="none", device=d)
                           for i, d in enumerate(devices)])


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    hide_libcuda(monkeypatch)
    for var in ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    nvml = seeds_box()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


@pytest.mark.unit
def test_each_gpus_budget_is_its_own_total_minus_the_reserve(box: FakeNvml) -> None:
    cat = catalog("cuda:0", "cuda:1", "cuda", "cpu")
    budgets = memory_budgets(cat, CoordinatorSettings(gpu_reserve_mb=768), open_meters(cat))
    assert budgets["cuda:0"] == 24 * GiB - RESERVE  # cuda:0 is the RTX 3090 (fastest first) ...
    assert budgets["cuda:1"] == 5 * GiB - RESERVE  # ... and cuda:1 the Quadro P2000
    assert budgets["cpu"] == int(HostMeter().device().total_bytes * 0.75)
    assert sorted(budgets) == ["cpu", "cuda:0", "cuda:1"]  # "cuda" is cuda:0


@pytest.mark.unit
def test_with_pci_bus_id_order_cuda_0_is_the_first_card_on_the_bus(box: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    cat = catalog("cuda:0")
    assert memory_budgets(cat, CoordinatorSettings(), open_meters(cat))["cuda:0"] == 5 * GiB - RESERVE


@pytest.mark.unit
def test_libcuda_decides_where_it_is_loadable(box: FakeNvml) -> None:
    from modelhost.meter import NvmlMeter

    meter = NvmlMeter.open(0, driver=FakeLibcuda(["0000:01:00.0", "0000:41:00.0"]), environ={})
    assert meter.device().total_bytes == 5 * GiB and meter.how == "libcuda"


@pytest.mark.unit
def test_a_configured_budget_wins_over_nvml(box: FakeNvml) -> None:
    cat = catalog("cuda:0")
    budgets = memory_budgets(cat, CoordinatorSettings(memory_budget_mb={"cuda:0": 22000}), open_meters(cat))
    assert budgets == {"cuda:0": 22000 * MiB}


@pytest.mark.unit
def test_a_reserve_larger_than_the_card_gives_a_zero_budget_not_a_negative_one(box: FakeNvml) -> None:
    cat = catalog("cuda:1")
    assert memory_budgets(cat, CoordinatorSettings(gpu_reserve_mb=6 * 1024), open_meters(cat)) == {"cuda:1": 0}


@pytest.mark.unit
def test_a_gpu_nvml_cannot_see_has_no_meter_and_no_budget_without_configuration(box: FakeNvml) -> None:
    # No budget: the coordinator lists its models as unavailable, and the CPU's still serve.
    cat = catalog("cuda:2", "cpu")
    meters = open_meters(cat)
    assert meters == {"cpu": None, "cuda:2": None}
    assert set(memory_budgets(cat, CoordinatorSettings(), meters)) == {"cpu"}
    assert memory_budgets(cat, CoordinatorSettings(memory_budget_mb={"cuda:2": 1000}), meters)["cuda:2"] == 1000 * MiB


@pytest.mark.unit
def test_without_nvml_no_gpu_gets_a_meter(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_libcuda(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND))
    assert open_meters(catalog("cuda:0", "cpu")) == {"cpu": None, "cuda:0": None}


GPU_CATALOG = """\
defaults: {device: "cuda:0", memory_estimate_mb: 2048}
models:
  - {id: cap-a, family: caption, backend: blip, source: ./nowhere-a}
  - {id: cap-b, family: caption, backend: blip, source: ./nowhere-b, device: "cuda:1"}
"""


@pytest.mark.app
async def test_the_gateway_budgets_each_gpu_from_nvml_and_shows_the_meter_beside_the_ledger(
        box: FakeNvml, tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(GPU_CATALOG)
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"caption": f"http://127.0.0.1:{free_port()}"})
    app = create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", reconcile_interval_s=None))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            gpu = (await c.get("/admin/gpu")).json()["devices"]
    assert gpu["cuda:0"]["budget_bytes"] == 24 * GiB - RESERVE
    assert gpu["cuda:0"]["meter"] == {"kind": "nvml", "total_bytes": 24 * GiB, "used_bytes": 500 * MiB,
                                      "free_bytes": 24 * GiB - 500 * MiB, "error": None}
    assert gpu["cuda:1"]["budget_bytes"] == 5 * GiB - RESERVE
    assert gpu["cuda:1"]["meter"]["used_bytes"] == 300 * MiB


@pytest.mark.app
async def test_a_lost_gpu_leaves_the_admin_view_answering_with_the_reason(box: FakeNvml, tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(GPU_CATALOG)
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"caption": f"http://127.0.0.1:{free_port()}"})
    app = create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", reconcile_interval_s=None))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            box.gpus[1].lost = True  # the RTX 3090, cuda:0, falls off the bus (an Xid error)
            r = await c.get("/admin/gpu")
            assert r.status_code == 200, r.text
            lost, alive = r.json()["devices"]["cuda:0"], r.json()["devices"]["cuda:1"]
            assert lost["meter"]["total_bytes"] is None and "lost" in lost["meter"]["error"].lower()
            assert lost["budget_bytes"] == 24 * GiB - RESERVE  # the ledger is still shown
            assert alive["meter"]["used_bytes"] == 300 * MiB and alive["meter"]["error"] is None

            r = await c.post("/admin/gpu/cuda:7/forget-unverified")
            assert r.status_code == 404 and r.json()["error"]["code"] == "device_not_found"
            r = await c.post("/admin/gpu/cuda:0/forget-unverified")
            assert r.status_code == 200 and r.json() == {"device": "cuda:0", "model": None, "forgotten_bytes": 0}
