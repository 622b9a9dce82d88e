"""The preload plan (``gateway.preload.plan``) on the real coordinator's ledger: the catalog's preload models
in priority order, within each device's budget, skipping (with the reason) one that does not fit, one
already resident, and one on a device this box does not have. The start-up preload itself, through real
services, is in ``test_models_pull_proc.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from gateway.coordinator.effects import Loaded, Released
from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.loop import Coordinator
from gateway.coordinator.policy import PolicyConfig
from gateway.preload import plan
from modelhost.catalog import Catalog, ModelSpec, load_catalog
from modelhost.contract import ModelRow

pytestmark = pytest.mark.unit

MiB = 2**20


class Effects:
    """What the services hold (``rows``), and loads and unloads that finish at once."""

    def __init__(self, rows: list[ModelRow] | None = None) -> None:
        self.rows = rows or []

    async def load(self, s: ModelSpec) -> Loaded:
        return Loaded(peak_memory_bytes=s.memory_estimate_bytes, load_s=0.01, device="cpu")

    async def unload(self, s: ModelSpec, charged_bytes: int) -> Released:
        return Released(charged_bytes, True, 0.01, "test")

    async def models(self, family: str) -> list[ModelRow]:
        return [r for r in self.rows if r.family == family]

    def device_used(self, device: str) -> None:
        return None

    def device_total(self, device: str) -> None:
        return None


def model(mid: str, mb: int, priority: int = 0, preload: bool = True, device: str = "cpu") -> ModelSpec:
    return ModelSpec(id=mid, family="caption", backend="blip", source=f"org/{mid}", memory_estimate_mb=mb,
                     priority=priority, preload=preload, device=device)


def coordinator(tmp_path: Path, catalog: Catalog, effects: Effects, budgets: dict[str, int] | None = None) -> Coordinator:
    return Coordinator(catalog, effects, budgets or {"cpu": 1000 * MiB}, FootprintStore(tmp_path / "footprints.json"),
                       config=PolicyConfig(), max_queue=8, meter_interval_s=None)


async def test_preload_goes_by_priority_and_skips_what_does_not_fit(tmp_path: Path) -> None:
    catalog = Catalog(models=[model("low", 300, priority=1), model("big", 500, priority=3), model("high", 600, priority=5),
                              model("plain", 100, preload=False), model("also-low", 100, priority=1)])
    c = coordinator(tmp_path, catalog, Effects())
    try:
        p = plan(catalog, c)
    finally:
        await c.close()
    assert p.load == ["high", "low", "also-low"]  # priority first, then catalog order
    assert list(p.skipped) == ["big"] and "needs 500 MiB of cpu, 400 MiB of its budget left" in p.skipped["big"]


async def test_preload_counts_what_is_already_resident(tmp_path: Path) -> None:
    catalog = Catalog(models=[model("held", 600, priority=9), model("next", 500), model("small", 300)])
    held = ModelRow(id="held", family="caption", backend="blip", state="ready", device_requested="cpu", device="cpu",
                    peak_memory_bytes=600 * MiB, memory_estimate_bytes=600 * MiB)
    c = coordinator(tmp_path, catalog, Effects([held]))
    try:
        await c.reconcile_all()  # the gateway plans after its first reconciliation
        p = plan(catalog, c)
    finally:
        await c.close()
    assert p.resident == ["held"] and p.load == ["small"] and list(p.skipped) == ["next"]


async def test_preload_skips_a_model_on_a_device_this_box_lacks(tmp_path: Path) -> None:
    catalog = Catalog(models=[model("gpu-one", 100, device="cuda:0"), model("cpu-one", 100)])
    c = coordinator(tmp_path, catalog, Effects(), budgets={"cpu": 1000 * MiB})
    try:
        p = plan(catalog, c)
    finally:
        await c.close()
    assert p.load == ["cpu-one"] and "gpu-one" in p.skipped


def test_preload_is_a_catalog_field(tmp_path: Path) -> None:
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  - {id: a, family: caption, backend: blip, source: org/a, preload: true}\n"
                 "  - {id: b, family: caption, backend: blip, source: org/b}\n")
    c = load_catalog(f)
    assert [m.preload for m in c.models] == [True, False]
