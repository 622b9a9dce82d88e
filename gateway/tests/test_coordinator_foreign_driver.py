"""Memory not ours and a load out of device memory through the driver (``loop.Coordinator``): the
real Core and run loop with the recording fake effects of ``test_coordinator_driver`` on a metered
GPU ledger; the meter's figures are whatever the test sets. Nothing sleeps on a timer: each step
waits for a condition."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from gateway.coordinator.footprints import FootprintStore
from gateway.coordinator.loop import Coordinator
from gateway.coordinator.policy import PolicyConfig
from gateway.metrics import GatewayMetrics
from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import InsufficientMemory, ModelNotReady, UpstreamEnvelope
from modelhost.meter import MeterError

from .test_coordinator_driver import Clock, RecordingEffects, loaded, released, row, until

pytestmark = pytest.mark.unit

MiB = 2**20
GPU = "cuda:0"


def gpu_spec(model: str, mb: int) -> ModelSpec:
    return ModelSpec(id=model, family="caption", backend="blip", source=f"./{model}", memory_estimate_mb=mb, device=GPU)


def out_of_memory() -> UpstreamEnvelope:
    """What a family service answers when a load ran out of device memory."""
    body = {"src": "caption-svc", "error": {"type": "unavailable_error", "code": "out_of_memory",
                                            "message": "A ran out of device memory while loading"}}
    return UpstreamEnvelope(503, body, "5")


class GpuWorld:
    def __init__(self, c: Coordinator, effects: RecordingEffects, clock: Clock, metrics: GatewayMetrics) -> None:
        self.c, self.effects, self.clock, self.metrics = c, effects, clock, metrics

    def gpu(self):  # noqa: ANN201 - the GPU ledger view
        return self.c.view()[GPU]

    def meter(self, used_mb: int, total_mb: int = 2000) -> None:
        self.effects.used[GPU] = used_mb * MiB
        self.effects.totals[GPU] = total_mb * MiB

    async def resident(self, model: str, mb: int) -> None:
        """``model`` loaded at ``mb`` and its request released (idle once the clock moves past the grace)."""
        task = asyncio.create_task(self.c.acquire(model, timeout_s=60))
        await self.effects.finish("load", model, loaded(mb))
        await asyncio.wait_for(task, 5)
        self.c.release(model)


@pytest.fixture()
async def world(tmp_path: Path) -> AsyncIterator[GpuWorld]:
    catalog = Catalog(models=[gpu_spec("A", 400), gpu_spec("B", 300), gpu_spec("C", 800)])
    effects, clock, metrics = RecordingEffects(), Clock(), GatewayMetrics()
    c = Coordinator(catalog, effects, {GPU: 1500 * MiB}, FootprintStore(tmp_path / "footprints.json"),
                    config=PolicyConfig(idle_grace_s=0.5), max_queue=8, clock=clock, metrics=metrics,
                    reserve_bytes=100 * MiB, meter_interval_s=0.01)
    w = GpuWorld(c, effects, clock, metrics)
    w.meter(0)
    c.meter_all()
    yield w
    await c.close()


async def test_a_meter_reading_shows_memory_not_ours_in_the_view_and_the_metrics(world: GpuWorld) -> None:
    await world.resident("A", 400)
    world.meter(400 + 700)  # ours, and 700 MiB of someone else's
    world.c.meter_all()
    gpu = world.gpu()
    assert gpu.foreign_bytes == 700 * MiB and gpu.total_bytes == 2000 * MiB
    assert gpu.room_bytes == (2000 - 100 - 700) * MiB  # under the 1500 MiB budget
    sample = world.metrics.registry.get_sample_value
    assert sample("roundhouse_coordinator_foreign_bytes", {"device": GPU}) == 700 * MiB
    assert sample("roundhouse_coordinator_room_bytes", {"device": GPU}) == 1200 * MiB


async def test_the_meters_are_read_periodically_once_started(world: GpuWorld) -> None:
    world.c.start()
    before = world.effects.calls.count(("meter", GPU))
    await until(lambda: world.effects.calls.count(("meter", GPU)) >= before + 3, "three periodic readings")
    world.meter(900)
    await until(lambda: world.gpu().foreign_bytes == 900 * MiB, "the new reading taken")


async def test_foreign_growth_evicts_an_idle_model(world: GpuWorld) -> None:
    await world.resident("A", 400)
    await world.resident("B", 300)
    world.clock.now += 10  # both idle
    world.meter(700 + 1000)  # room 900 for our 700: fine
    world.c.meter_all()
    assert world.effects.count("unload", "A") == 0
    world.meter(700 + 1300)  # room 600 for our 700: the least recently used goes
    world.c.meter_all()
    await until(lambda: world.effects.count("unload", "A") == 1, "A's eviction")
    assert world.effects.count("unload", "B") == 0
    await world.effects.finish("unload", "A", released(400))
    assert set(world.gpu().resident) == {"B"}
    sample = world.metrics.registry.get_sample_value
    assert sample("roundhouse_coordinator_evictions_total", {"model": "A", "reason": "foreign"}) == 1


async def test_a_model_kept_out_by_foreign_memory_is_refused_503_model_not_ready_after_one_reread(world: GpuWorld) -> None:
    world.meter(1500)  # room 400: C (800) fits the budget, not the room
    world.c.meter_all()
    with pytest.raises(ModelNotReady) as info:
        await asyncio.wait_for(world.c.acquire("C", timeout_s=60), 5)
    assert info.value.status == 503 and info.value.retry_after_s == 10.0 and info.value.retryable
    assert "held by processes not ours" in info.value.message
    world.meter(200)  # the other process ended
    task = asyncio.create_task(world.c.acquire("C", timeout_s=60))
    await world.effects.finish("load", "C", loaded(800))
    await asyncio.wait_for(task, 5)


async def test_a_meter_that_fails_keeps_the_room_as_last_read(world: GpuWorld) -> None:
    world.meter(600)
    world.c.meter_all()
    world.effects.totals[GPU] = MeterError("GPU is lost")
    world.c.meter_all()
    assert world.gpu().foreign_bytes == 600 * MiB


async def test_a_load_out_of_memory_evicts_an_idle_model_and_retries_once(world: GpuWorld) -> None:
    await world.resident("A", 400)
    world.clock.now += 10
    task = asyncio.create_task(world.c.acquire("C", timeout_s=60))
    await world.effects.finish("load", "C", out_of_memory())
    await world.effects.finish("unload", "A", released(400))
    await world.effects.finish("load", "C", loaded(800))
    await asyncio.wait_for(task, 5)
    assert world.effects.count("load", "C") == 2 and world.c.model_state("C").ledger_state == "ready"


async def test_a_load_out_of_memory_twice_is_503_insufficient_memory_naming_the_holders(world: GpuWorld) -> None:
    await world.resident("A", 400)
    await world.resident("B", 300)
    world.clock.now += 10
    task = asyncio.create_task(world.c.acquire("C", timeout_s=60))
    await world.effects.finish("load", "C", out_of_memory())
    for m in ("A", "B"):  # idle models worth C's footprint (800): both
        await world.effects.finish("unload", m, released(400 if m == "A" else 300))
    await world.effects.finish("load", "C", out_of_memory())
    with pytest.raises(InsufficientMemory) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.status == 503 and info.value.code == "insufficient_memory" and info.value.retry_after_s == 30.0
    assert "ran out of cuda:0 memory" in info.value.message and "not ours 0 MiB of 2000 MiB" in info.value.message
    assert world.c.model_state("C").ledger_state == "unloaded"
    again = asyncio.create_task(world.c.acquire("C", timeout_s=60))  # not failed for good
    await world.effects.finish("load", "C", loaded(800))
    await asyncio.wait_for(again, 5)


async def test_a_reading_before_the_first_reconciliation_never_charges_a_resident_model_twice(world: GpuWorld) -> None:
    """At start: A is resident at its service (the last gateway loaded it), and the meter is read before
    the service is: A's 400 MiB read as memory not ours, beside 500 MiB really not ours. Once the
    reconciliation charges A, its bytes leave the foreign figure, so C (800) is loaded beside A."""
    world.meter(400 + 500)
    world.c.meter_all()
    assert world.gpu().foreign_bytes == 900 * MiB
    world.effects.rows["caption"] = [row("A", "ready", peak_mb=400)]
    await world.c.reconcile("caption")  # no meter reading after it
    gpu = world.gpu()
    assert gpu.foreign_bytes == 500 * MiB and gpu.room_bytes == 1400 * MiB  # min(1500, 2000 - 100 - 500)
    world.clock.now += 10  # A idle: it could be evicted, and must not be
    task = asyncio.create_task(world.c.acquire("C", timeout_s=60))
    await world.effects.finish("load", "C", loaded(800))
    await asyncio.wait_for(task, 5)
    assert world.effects.count("unload", "A") == 0 and set(world.gpu().resident) == {"A", "C"}
