"""The GPU collector against a fake NVML (the hardware boundary); the collector and prometheus_client
are real, and every assertion reads the exposition text a scrape would get. The last test reads a
real GPU (gpu tier)."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.gpu_metrics import GpuCollector
from tests.doubles.fake_nvml import FakeGpu, FakeNvml

GiB = 2**30


def two_gpus() -> FakeNvml:
    return FakeNvml([
        FakeGpu("GPU-aaaa", "NVIDIA GeForce RTX 3090", 24 * GiB, 5 * GiB, utilization_pct=80, temperature_c=71, power_mw=312_250),
        FakeGpu("GPU-bbbb", "NVIDIA GeForce RTX 3050", 8 * GiB, 1 * GiB, utilization_pct=0, temperature_c=38, power_mw=9_000),
    ])


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} for every roundhouse_gpu_ sample."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.startswith("roundhouse_gpu_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def registry_with(collector: GpuCollector) -> CollectorRegistry:
    r = CollectorRegistry(auto_describe=True)
    r.register(collector)
    return r


def gpu(index: int, uuid: str, name: str) -> tuple:
    return tuple(sorted({"gpu": str(index), "uuid": uuid, "name": name}.items()))


@pytest.mark.unit
def test_every_gpu_is_exported_in_base_units_with_index_uuid_and_name() -> None:
    values = scrape(registry_with(GpuCollector(two_gpus())))
    g0, g1 = gpu(0, "GPU-aaaa", "NVIDIA GeForce RTX 3090"), gpu(1, "GPU-bbbb", "NVIDIA GeForce RTX 3050")
    assert values == {
        ("roundhouse_gpu_nvml_available", ()): 1.0,
        ("roundhouse_gpu_memory_used_bytes", g0): 5 * GiB, ("roundhouse_gpu_memory_used_bytes", g1): 1 * GiB,
        ("roundhouse_gpu_memory_total_bytes", g0): 24 * GiB, ("roundhouse_gpu_memory_total_bytes", g1): 8 * GiB,
        ("roundhouse_gpu_utilization_ratio", g0): 0.8, ("roundhouse_gpu_utilization_ratio", g1): 0.0,
        ("roundhouse_gpu_temperature_celsius", g0): 71.0, ("roundhouse_gpu_temperature_celsius", g1): 38.0,
        ("roundhouse_gpu_power_watts", g0): 312.25, ("roundhouse_gpu_power_watts", g1): 9.0,
    }


@pytest.mark.unit
def test_values_are_read_at_scrape_time() -> None:
    nvml = two_gpus()
    registry = registry_with(GpuCollector(nvml))
    key = ("roundhouse_gpu_memory_used_bytes", gpu(0, "GPU-aaaa", "NVIDIA GeForce RTX 3090"))
    assert scrape(registry)[key] == 5 * GiB
    nvml.gpus[0].used_bytes = 17 * GiB
    assert scrape(registry)[key] == 17 * GiB
    assert nvml.init_calls == 1  # initialised once, read every time


@pytest.mark.unit
def test_registering_does_not_touch_nvml() -> None:
    nvml = two_gpus()
    registry_with(GpuCollector(nvml))
    assert nvml.init_calls == 0


@pytest.mark.unit
def test_without_nvml_only_the_availability_gauge_is_exported_as_zero() -> None:
    values = scrape(registry_with(GpuCollector(FakeNvml(init_error="NVML Shared Library Not Found"))))
    assert values == {("roundhouse_gpu_nvml_available", ()): 0.0}


@pytest.mark.unit
def test_nvml_init_is_retried_after_the_retry_interval_only() -> None:
    now = [0.0]
    nvml = FakeNvml([FakeGpu("GPU-a", "A", 8 * GiB, GiB)], init_error="Driver Not Loaded")
    registry = registry_with(GpuCollector(nvml, retry_s=60, clock=lambda: now[0]))
    assert scrape(registry)[("roundhouse_gpu_nvml_available", ())] == 0
    nvml.init_error = None
    now[0] = 30.0
    assert scrape(registry)[("roundhouse_gpu_nvml_available", ())] == 0 and nvml.init_calls == 1
    now[0] = 61.0
    values = scrape(registry)
    assert values[("roundhouse_gpu_nvml_available", ())] == 1 and nvml.init_calls == 2
    assert values[("roundhouse_gpu_memory_total_bytes", gpu(0, "GPU-a", "A"))] == 8 * GiB


@pytest.mark.unit
def test_a_reading_the_board_does_not_support_is_left_out_for_that_gpu_only() -> None:
    nvml = two_gpus()
    nvml.gpus[1] = dataclasses.replace(nvml.gpus[1], supported=frozenset({"temperature"}))
    values = scrape(registry_with(GpuCollector(nvml)))
    g1 = gpu(1, "GPU-bbbb", "NVIDIA GeForce RTX 3050")
    assert ("roundhouse_gpu_power_watts", g1) not in values
    assert ("roundhouse_gpu_utilization_ratio", g1) not in values
    assert values[("roundhouse_gpu_temperature_celsius", g1)] == 38.0
    assert values[("roundhouse_gpu_memory_used_bytes", g1)] == 1 * GiB
    assert values[("roundhouse_gpu_power_watts", gpu(0, "GPU-aaaa", "NVIDIA GeForce RTX 3090"))] == 312.25


@pytest.mark.unit
def test_a_lost_gpu_is_left_out_and_the_others_are_still_exported() -> None:
    nvml = two_gpus()
    nvml.gpus[0].lost = True
    values = scrape(registry_with(GpuCollector(nvml)))
    assert values[("roundhouse_gpu_nvml_available", ())] == 1
    assert {labels for (_, labels) in values if labels} == {gpu(1, "GPU-bbbb", "NVIDIA GeForce RTX 3050")}


@pytest.mark.unit
def test_a_driver_that_stops_answering_exports_unavailable_then_recovers() -> None:
    now = [0.0]
    nvml = two_gpus()
    registry = registry_with(GpuCollector(nvml, retry_s=10, clock=lambda: now[0]))
    assert scrape(registry)[("roundhouse_gpu_nvml_available", ())] == 1
    nvml.lost = True
    assert scrape(registry) == {("roundhouse_gpu_nvml_available", ()): 0.0}
    nvml.lost = False
    now[0] = 11.0
    values = scrape(registry)
    assert values[("roundhouse_gpu_nvml_available", ())] == 1 and len(values) == 11
    assert nvml.init_calls == 2


@pytest.mark.gpu
def test_a_real_gpu_is_read_through_nvml_in_base_units() -> None:
    values = scrape(registry_with(GpuCollector()))
    assert values[("roundhouse_gpu_nvml_available", ())] == 1
    by_name: dict[str, dict[tuple, float]] = {}
    for (name, labels), v in values.items():
        by_name.setdefault(name, {})[labels] = v
    gpus = set(by_name["roundhouse_gpu_memory_total_bytes"])
    assert gpus and all(dict(g)["uuid"].startswith(("GPU-", "MIG-")) for g in gpus)
    for g in gpus:
        total = by_name["roundhouse_gpu_memory_total_bytes"][g]
        assert 2**30 <= total and 0 < by_name["roundhouse_gpu_memory_used_bytes"][g] <= total
        if g in by_name.get("roundhouse_gpu_utilization_ratio", {}):
            assert 0 <= by_name["roundhouse_gpu_utilization_ratio"][g] <= 1
        if g in by_name.get("roundhouse_gpu_temperature_celsius", {}):
            assert 10 <= by_name["roundhouse_gpu_temperature_celsius"][g] <= 110
        if g in by_name.get("roundhouse_gpu_power_watts", {}):
            assert 1 <= by_name["roundhouse_gpu_power_watts"][g] <= 2000  # watts, not milliwatts
