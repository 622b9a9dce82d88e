"""Learned swap costs: the Core learns each model's load and unload times from what the effects
measured, the driver remembers them in footprints.json, and a restart reads them back (older files too)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.coordinator.core import Core, Released
from gateway.coordinator.effects import Loaded
from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.loop import Coordinator
from gateway.coordinator.policy import ModelInfo, PolicyConfig
from modelhost.catalog import Catalog, ModelSpec
from modelhost.contract import ModelRow

pytestmark = pytest.mark.unit

MiB = 2**20


def test_a_verified_unload_teaches_the_core_its_unload_time() -> None:
    c = Core("test", 1000 * MiB, {"A": ModelInfo("A", 400 * MiB)}, config=PolicyConfig())
    c.arrive(1, "A", 0.0)
    c.load_done("A", 6.84, ok=True, peak_memory_bytes=350 * MiB, load_s=6.84)
    c.release("A", 7.0)
    c.request_unload(1, "A", 8.0)
    c.unload_done("A", 8.4, Released(350 * MiB, True, 0.41, "test", worker_stopped=True))
    assert c.models["A"].load_s == 6.84 and c.models["A"].unload_s == 0.41


def test_an_unverified_or_refused_unload_teaches_nothing() -> None:
    c = Core("test", 1000 * MiB, {"A": ModelInfo("A", 400 * MiB, unload_s=0.5)}, config=PolicyConfig())
    c.arrive(1, "A", 0.0)
    c.load_done("A", 1.0, ok=True, peak_memory_bytes=350 * MiB, load_s=1.0)
    c.release("A", 1.1)
    c.request_unload(1, "A", 2.0)
    c.unload_done("A", 32.0, Released(0, False, 30.0, "gave up waiting for the meter", worker_stopped=True))
    assert c.models["A"].unload_s == 0.5


def test_the_store_keeps_load_and_unload_times_apart_and_reads_older_files(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    path.write_text(json.dumps({"old": {"peak_bytes": 5 * MiB, "load_s": 2.5, "device": "cpu"}}))  # before 0.2
    store = FootprintStore(path)
    assert store.get("old")["peak_memory_bytes"] == 5 * MiB and store.unload_s("old") is None
    store.record_unload("fresh", 0.3)  # unloaded before any load was measured (adopted after a restart)
    assert store.get("fresh") is None and store.unload_s("fresh") == 0.3
    store.record("fresh", peak_memory_bytes=7 * MiB, load_s=0.24, device="cpu")  # a later load keeps it
    again = FootprintStore(path)
    assert again.get("fresh")["load_s"] == 0.24 and again.unload_s("fresh") == 0.3
    assert again.get("old")["peak_memory_bytes"] == 5 * MiB


class InstantEffects:
    """Loads and unloads that finish at once with the given measurements."""

    def __init__(self, load_s: float, unload_s: float) -> None:
        self.load_s, self.unload_s = load_s, unload_s

    async def load(self, spec: ModelSpec) -> Loaded:
        return Loaded(peak_memory_bytes=300 * MiB, load_s=self.load_s, device="cpu")

    async def unload(self, spec: ModelSpec, charged_bytes: int) -> Released:
        return Released(charged_bytes, True, self.unload_s, "test release", worker_stopped=True)

    async def models(self, family: str) -> list[ModelRow]:
        return []

    def device_used(self, device: str) -> int | None:
        return None


def coordinator(path: Path, effects: InstantEffects) -> Coordinator:
    catalog = Catalog(models=[ModelSpec(id="A", family="caption", backend="blip", source="./A", memory_estimate_mb=400)])
    return Coordinator(catalog, effects, {"cpu": 1000 * MiB}, FootprintStore(path), config=PolicyConfig(), max_queue=8)


async def test_measured_costs_are_remembered_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    c = coordinator(path, InstantEffects(load_s=6.84, unload_s=0.41))
    await asyncio.wait_for(c.acquire("A", timeout_s=30), 5)
    c.release("A")
    await asyncio.wait_for(c.unload("A", drain=True, timeout_s=30), 5)
    assert c.cores["cpu"].models["A"].unload_s == 0.41
    await c.close()
    again = coordinator(path, InstantEffects(load_s=0.0, unload_s=0.0))
    info = again.cores["cpu"].models["A"]
    assert (info.load_s, info.unload_s, info.footprint_bytes) == (6.84, 0.41, 300 * MiB)
    await again.close()
