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
from modelhost.errors import InternalError
from modelhost.meter import MeterError
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


async def test_a_gpu_lost_during_the_check_is_a_meter_error(box: FakeNvml) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 2 * GiB}, back_after_reads=None)
    fx = effects(service)

    def lose(g: FakeGpu) -> None:
        if g.memory_reads >= 2:
            g.lost = True

    gpu.on_memory_read = lose
    with pytest.raises(MeterError, match="GPU is lost"):
        await fx.unload(spec("blip"), 2 * GiB)


@pytest.mark.xfail(strict=True, reason="HttpEffects.unload expects 0.8 * min(charged, freed) back: a service that "
                                       "reports 0 freed bytes (its meter could not see the worker's pid) is verified "
                                       "without NVML showing anything back (coordinator/effects.py; reported, not mine)")
async def test_a_service_that_reports_nothing_freed_is_still_checked_against_nvml(box: FakeNvml) -> None:
    service = FakeService(box.gpus[RTX3090], {"blip": 2 * GiB}, back_after_reads=None, report_freed=False)
    released = await effects(service, release_timeout_s=0.2).unload(spec("blip"), 2 * GiB)
    assert not released.verified


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


@pytest.mark.xfail(strict=True, reason="Coordinator._unload passes an unverified release to Core.unload_done, which "
                                       "drops the whole charge: the ledger then admits a model into memory NVML "
                                       "still shows in use (coordinator/loop.py + core.py; reported, not mine)")
async def test_the_ledger_keeps_charging_a_release_nvml_never_confirmed(box: FakeNvml, tmp_path: Path) -> None:
    service = FakeService(box.gpus[RTX3090], {"a": 3 * GiB, "b": 3 * GiB}, back_after_reads=None)
    c, _ = coordinator(tmp_path, service, 4 * GiB)
    await c.acquire("a", timeout_s=5)
    c.release("a")
    await c.unload("a", drain=True, timeout_s=5)
    try:
        assert c.view()["cuda:0"].used_bytes >= 3 * GiB  # NVML still shows a's 3 GiB in use
    finally:
        await c.close()


async def test_a_gpu_lost_during_an_unload_is_answered_counted_and_reconciled(box: FakeNvml, tmp_path: Path) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"a": 3 * GiB}, back_after_reads=None)
    c, metrics = coordinator(tmp_path, service, 4 * GiB)
    await c.acquire("a", timeout_s=5)
    c.release("a")
    gpu.lost = True
    with pytest.raises(InternalError):
        await c.unload("a", drain=True, timeout_s=5)
    assert metric(metrics, "roundhouse_coordinator_release_unverified_total", model="a") == 1
    # Reconciled at once: the service still holds a, so the ledger charges it again (honest).
    assert c.view()["cuda:0"].used_bytes == 3 * GiB and c.model_state("a").ledger_state == "ready"
    await c.close()


@pytest.mark.xfail(strict=True, reason="HttpEffects.unload reads the meter before asking the service to unload, so "
                                       "with the GPU lost the service is never asked and the model cannot be "
                                       "unloaded at all (coordinator/effects.py; reported, not mine)")
async def test_a_lost_gpu_still_lets_the_service_unload_its_model(box: FakeNvml) -> None:
    gpu = box.gpus[RTX3090]
    service = FakeService(gpu, {"blip": 2 * GiB}, back_after_reads=None)
    fx = effects(service)
    await service.load("blip", timeout_s=1)
    gpu.lost = True
    try:
        await fx.unload(spec("blip"), 2 * GiB)
    except MeterError:
        pass
    assert "blip" not in service.resident
