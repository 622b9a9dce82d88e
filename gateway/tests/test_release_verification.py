"""Verified release: ``HttpEffects.unload`` polls NVML until the memory is back, else times out into a
metric. The meter is the real ``NvmlMeter`` over the fake NVML (the hardware boundary); the family
service is a double of the ``ModelHostClient`` API whose unload gives memory back on the fake GPU
(or never does); ``HttpEffects`` and the ``Coordinator`` above it are real.

Nothing sleeps in the tests: memory comes back after a number of NVML reads (the fake counts them),
and the time-outs are short settings."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.budgets import open_meters
from gateway.coordinator.effects import HttpEffects
from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.loop import Coordinator
from gateway.coordinator.policy import PolicyConfig
from gateway.metrics import GatewayMetrics
from modelhost.catalog import Catalog, ModelSpec
from modelhost.contract import DeviceMemory, ModelRow, ModelsReply, UnloadReply
from modelhost.errors import ModelNotReady
from tests.doubles.fake_cuda import hide_libcuda
from tests.doubles.fake_nvml import FakeGpu, FakeNvml, seeds_box

pytestmark = pytest.mark.unit

GiB, MiB = 2**30, 2**20
P2000, RTX3090 = 0, 1  # NVML's indices on the seeds' box; CUDA calls the 3090 cuda:0


class FakeService:
    """A family service as ``ModelHostClient`` shows it: each model lands on one fake GPU (``gpu``)
    with ``bytes_by_model``. ``back_after_reads``: NVML reads of that GPU, after the unload is
    answered, before its memory shows free (None: never — a leaked context, a zombie worker)."""

    def __init__(self, gpu: FakeGpu, bytes_by_model: dict[str, int], *, back_after_reads: int | None = 2,
                 report_freed: bool = True, family: str = "caption") -> None:
        self.gpu, self.bytes_by_model, self.family = gpu, bytes_by_model, family
        self.back_after_reads, self.report_freed = back_after_reads, report_freed
        self.resident: set[str] = set()
        self.unload_state = "unloaded"

    def _row(self, model: str) -> ModelRow:
        loaded = model in self.resident
        return ModelRow(id=model, family=self.family, backend="blip", state="ready" if loaded else "unloaded",
                        device_requested="cuda:0", device="cuda:0" if loaded else None,
                        memory_bytes=self.bytes_by_model[model] if loaded else None,
                        peak_memory_bytes=self.bytes_by_model[model] if loaded else None,
                        memory_estimate_bytes=self.bytes_by_model[model], load_s=1.0, warmup_s=0.5)

    async def load(self, model: str, *, timeout_s: float, request_id: str | None = None) -> ModelRow:
        self.gpu.used_bytes += self.bytes_by_model[model]
        self.resident.add(model)
        return self._row(model)

    async def unload(self, model: str, *, drain: bool, timeout_s: float, request_id: str | None = None) -> UnloadReply:
        freed = self.bytes_by_model[model]
        if self.unload_state == "unloaded":
            self.resident.discard(model)
            if self.back_after_reads is not None:
                self._give_back(freed, self.gpu.memory_reads + self.back_after_reads)
        return UnloadReply(model=model, state=self.unload_state, freed_bytes=freed if self.report_freed else 0,
                           unload_s=0.1, worker_stopped=not self.resident)

    def _give_back(self, nbytes: int, at_read: int) -> None:
        def hook(gpu: FakeGpu) -> None:
            if gpu.memory_reads >= at_read:
                gpu.used_bytes -= nbytes
                gpu.on_memory_read = None

        self.gpu.on_memory_read = hook

    async def models(self, *, timeout_s: float = 5.0) -> ModelsReply:
        return ModelsReply(family=self.family, service="caption-svc", meter="nvml",
                           device=DeviceMemory(device="cuda:0", total_bytes=self.gpu.total_bytes, used_bytes=self.gpu.used_bytes),
                           data=[self._row(m) for m in self.bytes_by_model])


def spec(model: str, device: str = "cuda:0") -> ModelSpec:
    return ModelSpec(id=model, family="caption", backend="blip", source="none", device=device, memory_estimate_mb=2048)


@pytest.fixture
def box(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    hide_libcuda(monkeypatch)  # the gateway reads NVML only (a container given "utility" alone)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = seeds_box()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


def effects(service: FakeService, devices: tuple[str, ...] = ("cuda:0",), release_timeout_s: float = 5.0) -> HttpEffects:
    meters = open_meters(Catalog(models=[spec(f"m{i}", d) for i, d in enumerate(devices)]))
    return HttpEffects({"caption": service}, meters, load_timeout_s=5.0, release_timeout_s=release_timeout_s)


async def test_a_release_is_verified_as_soon_as_nvml_shows_the_memory_back(box: FakeNvml) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 2 * GiB}, back_after_reads=3)
    fx = effects(service)
    await service.load("blip", timeout_s=1)
    reads = gpu.memory_reads
    released = await fx.unload(spec("blip"), 2 * GiB)
    assert released.verified and released.detail == "NVML: 2048 MiB back"
    assert released.freed_bytes == 2 * GiB and released.worker_stopped
    assert gpu.memory_reads - reads == 4  # the reading before, then polled until the memory was back
    assert released.seconds < 1.0  # backed off from 10 ms: no fixed sleep


async def test_a_release_that_never_comes_back_times_out_unverified(box: FakeNvml) -> None:
    service = FakeService(box.gpus[RTX3090], {"blip": 2 * GiB}, back_after_reads=None)
    fx = effects(service, release_timeout_s=0.3)
    await service.load("blip", timeout_s=1)
    t0 = time.monotonic()
    released = await fx.unload(spec("blip"), 2 * GiB)
    assert not released.verified
    assert released.detail.startswith("NVML shows 0 MiB back of 2048 MiB after")
    assert 0.3 <= released.seconds <= time.monotonic() - t0 < 1.5


async def test_the_release_is_watched_on_the_card_the_model_is_on(box: FakeNvml) -> None:
    # cuda:0 is the 3090 (NVML's GPU 1): memory coming back there verifies a cuda:0 model ...
    on_3090 = FakeService(box.gpus[RTX3090], {"a": 2 * GiB})
    assert (await effects(on_3090, ("cuda:0", "cuda:1")).unload(spec("a", "cuda:0"), 2 * GiB)).verified
    # ... but not a cuda:1 model (the P2000, NVML's GPU 0): its card shows nothing back.
    box.gpus[RTX3090].used_bytes += 2 * GiB
    wrong_card = FakeService(box.gpus[RTX3090], {"b": 2 * GiB})
    released = await effects(wrong_card, ("cuda:0", "cuda:1"), release_timeout_s=0.2).unload(spec("b", "cuda:1"), 2 * GiB)
    assert not released.verified
    assert box.gpus[P2000].memory_reads > 1 and box.gpus[RTX3090].memory_reads > 1


async def test_a_service_that_did_not_unload_is_not_verified_and_nvml_is_not_polled(box: FakeNvml) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 2 * GiB})
    service.unload_state = "ready"
    fx = effects(service)
    reads = gpu.memory_reads
    released = await fx.unload(spec("blip"), 2 * GiB)
    assert not released.verified and released.detail == "service answered state ready"
    assert gpu.memory_reads - reads == 1  # the reading before only


async def test_on_the_host_the_services_measurement_is_the_verification(box: FakeNvml) -> None:
    service = FakeService(box.gpus[RTX3090], {"blip": 2 * GiB}, back_after_reads=None)
    fx = HttpEffects({"caption": service}, {"cpu": None}, load_timeout_s=5.0, release_timeout_s=5.0)
    released = await fx.unload(spec("blip", "cpu"), 2 * GiB)
    assert released.verified and released.detail == "service-measured release"


async def test_a_gpu_lost_during_the_check_leaves_the_release_unverified(box: FakeNvml) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 2 * GiB}, back_after_reads=None)
    fx = effects(service)
    await service.load("blip", timeout_s=1)

    def lose(g: FakeGpu) -> None:
        if g.memory_reads >= 2:
            g.lost = True

    gpu.on_memory_read = lose
    released = await fx.unload(spec("blip"), 2 * GiB)
    assert not released.verified and released.unloaded and "GPU is lost" in released.detail
    assert "blip" not in service.resident


async def test_a_service_that_reports_nothing_freed_is_still_checked_against_nvml(box: FakeNvml) -> None:
    service = FakeService(box.gpus[RTX3090], {"blip": 2 * GiB}, back_after_reads=None, report_freed=False)
    await service.load("blip", timeout_s=1)
    released = await effects(service, release_timeout_s=0.2).unload(spec("blip"), 2 * GiB)
    assert not released.verified and released.returned_bytes == 0


async def test_a_service_that_reports_nothing_freed_is_verified_by_nvml_showing_the_charge_back(box: FakeNvml) -> None:
    service = FakeService(box.gpus[RTX3090], {"blip": 2 * GiB}, report_freed=False)
    await service.load("blip", timeout_s=1)
    released = await effects(service).unload(spec("blip"), 2 * GiB)
    assert released.verified and released.freed_bytes == 0 and released.returned_bytes == 2 * GiB


async def test_nvml_must_show_the_whole_charge_back_when_the_worker_stopped(box: FakeNvml) -> None:
    # The service measured 1 GiB freed, but its worker ended: all 2 GiB the ledger charged must come back.
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 1 * GiB}, back_after_reads=1)
    await service.load("blip", timeout_s=1)
    released = await effects(service, release_timeout_s=0.2).unload(spec("blip"), 2 * GiB)
    assert not released.verified and released.worker_stopped and released.returned_bytes == 1 * GiB


# --- through the coordinator -----------------------------------------------------------------------


def coordinator(tmp_path: Path, service: FakeService, budget_bytes: int) -> tuple[Coordinator, GatewayMetrics]:
    catalog = Catalog(models=[spec(m) for m in service.bytes_by_model])
    metrics = GatewayMetrics()
    c = Coordinator(catalog, effects(service, release_timeout_s=0.2), {"cuda:0": budget_bytes},
                    FootprintStore(tmp_path / "footprints.json"), config=PolicyConfig(), max_queue=8, metrics=metrics)
    return c, metrics


def metric(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise KeyError(name)


async def test_an_unverified_release_is_counted_in_the_metric_and_answered(box: FakeNvml, tmp_path: Path) -> None:
    service = FakeService(box.gpus[RTX3090], {"a": 3 * GiB, "b": 3 * GiB}, back_after_reads=None)
    c, metrics = coordinator(tmp_path, service, 4 * GiB)
    await c.acquire("a", timeout_s=5)
    c.release("a")
    released = await c.unload("a", drain=True, timeout_s=5)
    assert released is not None and not released.verified
    assert c.unverified_releases == 1
    assert metric(metrics, "roundhouse_coordinator_release_unverified_total", model="a") == 1
    assert metric(metrics, "roundhouse_coordinator_release_seconds_count", model="a") == 1
    await c.close()


async def test_the_ledger_keeps_charging_a_release_nvml_never_confirmed(box: FakeNvml, tmp_path: Path) -> None:
    service = FakeService(box.gpus[RTX3090], {"a": 3 * GiB, "b": 3 * GiB}, back_after_reads=None)
    c, metrics = coordinator(tmp_path, service, 4 * GiB)
    await c.acquire("a", timeout_s=5)
    c.release("a")
    await c.unload("a", drain=True, timeout_s=5)
    try:
        assert c.view()["cuda:0"].used_bytes >= 3 * GiB  # NVML still shows a's 3 GiB in use
        assert c.view()["cuda:0"].unverified == {"a": 3 * GiB} and c.model_state("a").ledger_state == "unloaded"
        assert metric(metrics, "roundhouse_coordinator_unverified_bytes", device="cuda:0") == 3 * GiB
    finally:
        await c.close()


async def test_unverified_bytes_are_let_go_once_the_services_worker_is_gone(box: FakeNvml, tmp_path: Path) -> None:
    service = FakeService(box.gpus[RTX3090], {"a": 3 * GiB}, back_after_reads=None)
    c, metrics = coordinator(tmp_path, service, 4 * GiB)
    await c.acquire("a", timeout_s=5)
    c.release("a")
    await c.unload("a", drain=True, timeout_s=5)
    assert c.view()["cuda:0"].unverified == {"a": 3 * GiB}
    await c.reconcile_all()  # the periodic reconciliation: caption-svc holds no model, so no worker
    assert c.view()["cuda:0"].unverified == {} and c.view()["cuda:0"].used_bytes == 0
    assert metric(metrics, "roundhouse_coordinator_unverified_bytes", device="cuda:0") == 0
    await c.close()


async def test_unverified_bytes_keep_a_load_out_until_nvml_shows_them_back(box: FakeNvml, tmp_path: Path) -> None:
    gpu = box.gpus[RTX3090]
    # "keep" stays loaded, so caption-svc's worker lives on: only the meter can tell a's bytes came back.
    service = FakeService(gpu, {"keep": 1 * GiB, "a": 3 * GiB, "b": 3 * GiB}, back_after_reads=None)
    c, _ = coordinator(tmp_path, service, 4 * GiB)
    for model in ("keep", "a"):
        await c.acquire(model, timeout_s=5)
        c.release(model)
    await c.unload("a", drain=True, timeout_s=5)
    assert c.view()["cuda:0"].unverified == {"a": 3 * GiB} and c.view()["cuda:0"].used_bytes == 4 * GiB
    # b fits the budget, but not beside what NVML still shows: refused once the truth was read again.
    with pytest.raises(ModelNotReady) as info:
        await c.acquire("b", timeout_s=5)
    assert info.value.status == 503 and info.value.retry_after_s == 15.0 and "not verified" in info.value.message
    assert "b" not in service.resident and c.view()["cuda:0"].unverified == {"a": 3 * GiB}
    gpu.used_bytes -= 3 * GiB  # a's memory comes back at last
    await c.acquire("b", timeout_s=5)  # re-read: NVML shows it back, so the ledger lets it go and b loads
    c.release("b")
    assert c.view()["cuda:0"].unverified == {} and "b" in service.resident
    assert c.view()["cuda:0"].used_bytes <= 4 * GiB
    await c.close()


async def test_a_gpu_lost_during_an_unload_still_unloads_and_stays_charged_until_the_worker_is_gone(
        box: FakeNvml, tmp_path: Path) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"a": 3 * GiB}, back_after_reads=None)
    c, metrics = coordinator(tmp_path, service, 4 * GiB)
    await c.acquire("a", timeout_s=5)
    c.release("a")
    gpu.lost = True
    released = await c.unload("a", drain=True, timeout_s=5)
    assert released is not None and not released.verified and "GPU is lost" in released.detail
    assert "a" not in service.resident  # the service was asked, whatever the meter did
    assert metric(metrics, "roundhouse_coordinator_release_unverified_total", model="a") == 1
    assert c.view()["cuda:0"].used_bytes == 3 * GiB and c.view()["cuda:0"].unverified == {"a": 3 * GiB}
    await c.reconcile_all()  # the meter cannot be read, but the service's worker is gone
    assert c.view()["cuda:0"].used_bytes == 0
    await c.close()


async def test_a_lost_gpu_still_lets_the_service_unload_its_model(box: FakeNvml) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 2 * GiB}, back_after_reads=None)
    fx = effects(service)
    await service.load("blip", timeout_s=1)
    gpu.lost = True
    released = await fx.unload(spec("blip"), 2 * GiB)
    assert "blip" not in service.resident
    assert not released.verified and released.unloaded and released.device_used_bytes is None
