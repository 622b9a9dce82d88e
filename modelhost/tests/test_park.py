"""The parked tier (``modelhost.park``) with real worker processes: a park keeps the model's weights in the live
worker and its next load un-parks it there; where it cannot be parked (the setting off, a backend that cannot, the
host-memory cap), a park unloads instead and says why; an unload of a parked model, or the worker's death, takes
it out of host memory. The backend stands in for a framework (torch's ``.to("cpu")``): its "weights" are a buffer
it hands over to host memory and takes back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelhost.backend import Backend
from modelhost.catalog import Catalog, ModelSpec
from modelhost.meter import HostMeter
from modelhost.metrics import HostMetrics
from modelhost.runtime import ModelRuntime
from modelhost.settings import HostSettings
from modelhost.states import ModelState
from tests.doubles.arithmetic import ArithmeticBackend

pytestmark = pytest.mark.app

S = ModelState
MiB = 2**20
DEADLINE_S = 20.0


class ParkingArithmetic(ArithmeticBackend):
    """ArithmeticBackend whose weights can be parked: ``park`` hands its buffer to "host memory" (a second
    reference, the device's dropped), ``unpark`` takes it back; inference while parked is a bug and fails."""

    can_park = True

    def park(self) -> int:
        self._host, self._ballast = self._ballast, None
        return len(self._host)

    def unpark(self) -> None:
        self._ballast, self._host = self._host, None

    def infer(self, items: list) -> list:
        if getattr(self, "_host", None) is not None:
            raise RuntimeError("inference on a parked model")
        return super().infer(items)


BACKENDS = {"arith": "tests.doubles.arithmetic:ArithmeticBackend", "parking": f"{__name__}:ParkingArithmetic"}


def spec(model_id: str, backend: str = "parking", alloc_mb: int = 8, **kw: Any) -> ModelSpec:
    return ModelSpec(id=model_id, family="arith", backend=backend, source="none", options={"alloc_mb": alloc_mb}, **kw)


@pytest.fixture
async def make_runtime(tmp_path: Path):
    made: list[ModelRuntime] = []

    def make(*specs: ModelSpec, **settings: Any) -> ModelRuntime:
        settings = {"park": True, "spare_worker": False, **settings}
        rt = ModelRuntime(family="arith", catalog=Catalog(models=list(specs)), backends=BACKENDS,
                          settings=HostSettings(cache_dir=tmp_path / "cache", **settings), meter=HostMeter(),
                          metrics=HostMetrics("arith"), gpu_index=None)
        rt.start()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        await asyncio.wait_for(rt.close(), DEADLINE_S)


def sample(rt: ModelRuntime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"family": "arith", **labels}) or 0.0


async def infer(rt: ModelRuntime, model: str, item: Any) -> Any:
    async with rt.lease(model) as lease:
        return await lease.infer(item)


async def test_a_parked_model_stays_in_its_worker_and_its_next_load_unparks_it(make_runtime) -> None:
    rt = make_runtime(spec("a"))
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    worker = rt.worker_pid
    assert rt.describe(rt.entries["a"]).parkable is True
    reply = await asyncio.wait_for(rt.park("a"), DEADLINE_S)
    assert reply.parked and reply.state == "parked" and reply.host_memory_bytes == 8 * MiB
    assert not reply.worker_stopped and rt.worker_pid == worker and psutil.pid_exists(worker)
    row = rt.describe(rt.entries["a"])
    assert row.state == "parked" and row.host_memory_bytes == 8 * MiB and row.memory_bytes == 0 and not row.resident
    assert sample(rt, "roundhouse_model_parked_models") == 1
    assert sample(rt, "roundhouse_model_parked_host_bytes") == 8 * MiB
    with pytest.raises(Exception, match="parked"):  # a parked model takes no request
        await infer(rt, "a", 1)

    entry = await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    row = rt.describe(entry)
    assert row.state == "ready" and row.unparked and row.unpark_s is not None and row.host_memory_bytes is None
    assert row.memory_bytes is not None and row.memory_bytes > 0  # its device memory is charged again
    assert rt.worker_pid == worker  # the same worker: a copy, not a load into a new process
    assert await infer(rt, "a", 21) == {"value": 42, "batch": 1, "pid": worker}
    assert sample(rt, "roundhouse_model_parked_models") == 0
    assert sample(rt, "roundhouse_model_unpark_seconds_count", model="a") == 1


async def test_a_park_where_parking_is_off_unloads_and_says_why(make_runtime) -> None:
    rt = make_runtime(spec("a"), park=False)
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert rt.describe(rt.entries["a"]).parkable is False
    reply = await asyncio.wait_for(rt.park("a"), DEADLINE_S)
    assert not reply.parked and reply.state == "unloaded" and "park setting" in reply.reason
    assert reply.worker_stopped and rt.worker_pid is None


async def test_a_park_of_a_backend_that_cannot_park_unloads_it(make_runtime) -> None:
    rt = make_runtime(spec("a", backend="arith"))
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    reply = await asyncio.wait_for(rt.park("a"), DEADLINE_S)
    assert not reply.parked and reply.state == "unloaded" and "cannot park" in reply.reason


async def test_a_park_past_the_host_memory_cap_unloads_instead(make_runtime) -> None:
    rt = make_runtime(spec("a"), spec("b", alloc_mb=40), park_host_bytes=30 * MiB)
    for name in ("a", "b"):
        await asyncio.wait_for(rt.ensure_ready(name), DEADLINE_S)
    assert (await asyncio.wait_for(rt.park("a"), DEADLINE_S)).parked
    reply = await asyncio.wait_for(rt.park("b"), DEADLINE_S)
    assert not reply.parked and reply.state == "unloaded" and "park_host_bytes" in reply.reason
    assert rt.entries["a"].state is S.PARKED and rt.worker_pid is not None  # the parked one keeps the worker


async def test_unloading_the_last_parked_model_ends_the_worker(make_runtime) -> None:
    rt = make_runtime(spec("a"))
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    worker = rt.worker_pid
    await asyncio.wait_for(rt.park("a"), DEADLINE_S)
    reply = await asyncio.wait_for(rt.unload("a"), DEADLINE_S)
    assert reply.state == "unloaded" and reply.worker_stopped and not psutil.pid_exists(worker)
    assert sample(rt, "roundhouse_model_parked_models") == 0 and sample(rt, "roundhouse_model_parked_host_bytes") == 0


async def test_a_worker_that_dies_fails_its_parked_models(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"), spec("b"))
    for name in ("a", "b"):
        await asyncio.wait_for(rt.ensure_ready(name), DEADLINE_S)
    await asyncio.wait_for(rt.park("a"), DEADLINE_S)
    with pytest.raises(Exception):
        await infer(rt, "b", "crash")
    await wait_until(lambda: rt.entries["a"].state is S.FAILED, "the parked model failed with its worker", DEADLINE_S)
    assert sample(rt, "roundhouse_model_parked_models") == 0
    entry = await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)  # and loads again, from disk
    assert entry.state is S.READY and not rt.describe(entry).unparked


async def test_a_parked_model_is_unloaded_once_idle_for_its_ttl(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a", ttl_s=0.5), reaper_interval_s=0.05)
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    await asyncio.wait_for(rt.park("a"), DEADLINE_S)
    assert rt.entries["a"].state is S.PARKED
    await wait_until(lambda: rt.entries["a"].state is S.UNLOADED, "the idle parked model is reaped")
    assert sample(rt, "roundhouse_model_unloads_total", model="a", reason="ttl") == 1
    assert sample(rt, "roundhouse_model_parked_models") == 0 and rt.worker_pid is None
