"""The warm spare worker (``modelhost.spare``, ``modelhost.workers``) with real worker processes: a load takes
the spare, a new one replaces it, a dying one is replaced, shutdown stops it, turned off there is none; and
through the host API against the fake NVML, a service left with only its spare holds no device memory."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelhost.app import Family, create_host_app
from modelhost.catalog import Catalog, ModelSpec
from modelhost.meter import HostMeter
from modelhost.metrics import HostMetrics
from modelhost.runtime import ModelRuntime
from modelhost.settings import HostSettings
from modelhost.states import ModelState
from tests.doubles.fake_cuda import hide_libcuda
from tests.doubles.fake_nvml import one_gpu

pytestmark = pytest.mark.app

S = ModelState
GiB, MiB = 2**30, 2**20
DEADLINE_S = 20.0
BACKENDS = {"arith": "tests.doubles.arithmetic:PreloadingArithmeticBackend"}


def spec(model_id: str, **kw: Any) -> ModelSpec:
    return ModelSpec(id=model_id, family="arith", backend="arith", source="none", **kw)


@pytest.fixture
async def make_runtime(tmp_path: Path):
    made: list[ModelRuntime] = []

    def make(*specs: ModelSpec, **settings: Any) -> ModelRuntime:
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


def spare_pid(rt: ModelRuntime) -> int | None:
    row = rt.workers.spare_row()
    return row.pid if row is not None and row.state == "ready" else None


def worker_children() -> set[int]:
    pids = set()
    for p in psutil.Process().children():
        try:
            if "modelhost.worker" in p.cmdline():
                pids.add(p.pid)
        except psutil.Error:
            pass
    return pids


async def test_a_spare_is_kept_with_its_backends_imported_and_reports_its_memory(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await wait_until(lambda: spare_pid(rt) is not None, "a spare is ready", DEADLINE_S)
    row = rt.workers.spare_row()
    # The backend's module and its preload; a module that fails to import is left out, the spare kept.
    assert row.preloaded == ["tests.doubles.arithmetic", "colorsys", BACKENDS["arith"] + ".prepare()"]
    assert row.host_memory_bytes > 10 * MiB and row.preload_s is not None
    assert worker_children() == {row.pid} and rt.worker_pid is None
    assert sample(rt, "roundhouse_model_spare_state", state="ready") == 1
    assert sample(rt, "roundhouse_model_spare_memory_bytes") > 10 * MiB


async def test_a_load_takes_the_spare_and_a_new_spare_replaces_it(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await wait_until(lambda: spare_pid(rt) is not None, "a spare is ready", DEADLINE_S)
    first = spare_pid(rt)
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert rt.worker_pid == first  # the spare became the worker
    [result] = await asyncio.wait_for(_infer(rt, "a", 21), DEADLINE_S)
    assert result == {"value": 42, "batch": 1, "pid": first}
    assert sample(rt, "roundhouse_model_worker_starts_total", source="spare") == 1
    assert sample(rt, "roundhouse_model_worker_starts_total", source="cold") == 0
    await wait_until(lambda: spare_pid(rt) not in (None, first), "a new spare is ready", DEADLINE_S)
    assert worker_children() == {first, spare_pid(rt)}


async def test_a_load_asked_while_the_spare_starts_waits_for_it_instead_of_starting_a_worker(make_runtime) -> None:
    rt = make_runtime(spec("a"))
    assert rt.workers.spare_row() is None or rt.workers.spare_row().state == "starting"
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert sample(rt, "roundhouse_model_worker_starts_total", source="spare") == 1
    assert sample(rt, "roundhouse_model_worker_starts_total", source="cold") == 0


async def test_a_load_into_the_spare_is_charged_the_frameworks_as_a_load_into_a_cold_worker(make_runtime, wait_until) -> None:
    # On the host meter the framework's memory (done by prepare in the spare) belongs to the first model, as when
    # a cold worker's first load imports it: footprints do not depend on whether a spare was there.
    cold = make_runtime(spec("a"), spare_worker=False)
    warm = make_runtime(spec("a"))
    await wait_until(lambda: spare_pid(warm) is not None, "a spare is ready", DEADLINE_S)
    cold_entry = await asyncio.wait_for(cold.ensure_ready("a"), DEADLINE_S)
    warm_entry = await asyncio.wait_for(warm.ensure_ready("a"), DEADLINE_S)
    assert sample(warm, "roundhouse_model_worker_starts_total", source="spare") == 1
    for entry in (cold_entry, warm_entry):
        assert entry.peak_memory_bytes >= 32 * MiB


async def test_the_last_unload_ends_the_worker_and_leaves_a_spare(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a", options={"alloc_mb": 160}))
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    worker = rt.worker_pid
    reply = await asyncio.wait_for(rt.unload("a"), DEADLINE_S)
    assert reply.worker_stopped and rt.worker_pid is None and not psutil.pid_exists(worker)
    await wait_until(lambda: spare_pid(rt) is not None, "a spare is ready", DEADLINE_S)
    assert spare_pid(rt) != worker and worker_children() == {spare_pid(rt)}
    assert rt.workers.spare_row().host_memory_bytes < 160 * MiB  # its framework, not the model: a fresh process


async def test_a_spare_that_dies_is_replaced(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await wait_until(lambda: spare_pid(rt) is not None, "a spare is ready", DEADLINE_S)
    dead = spare_pid(rt)
    psutil.Process(dead).kill()
    await wait_until(lambda: spare_pid(rt) not in (None, dead), "another spare is ready", DEADLINE_S)
    assert sample(rt, "roundhouse_model_worker_exits_total", cause="crashed") == 0  # a spare is no worker
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert rt.entries["a"].state is S.READY


async def test_a_crashed_worker_is_followed_by_a_spare_that_the_next_load_takes(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    crashed = rt.worker_pid
    await asyncio.wait_for(_infer(rt, "a", "crash"), DEADLINE_S)
    await wait_until(lambda: rt.entries["a"].state is S.FAILED, "the model is FAILED")
    await wait_until(lambda: spare_pid(rt) not in (None, crashed), "a spare is ready", DEADLINE_S)
    spare = spare_pid(rt)
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert rt.worker_pid == spare


async def test_closing_the_runtime_stops_the_spare(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await wait_until(lambda: spare_pid(rt) is not None, "a spare is ready", DEADLINE_S)
    pid = spare_pid(rt)
    await asyncio.wait_for(rt.close(), DEADLINE_S)
    assert not psutil.pid_exists(pid) and rt.workers.spare_row() is None
    assert sample(rt, "roundhouse_model_spare_state", state="none") == 1


async def test_with_the_spare_off_there_is_none_and_a_load_starts_a_worker_cold(make_runtime) -> None:
    rt = make_runtime(spec("a"), spare_worker=False)
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    await asyncio.wait_for(rt.unload("a"), DEADLINE_S)
    await asyncio.sleep(0)  # a replenish, were it wrongly scheduled, would have started by now
    assert rt.workers.spare_row() is None and worker_children() == set()
    assert sample(rt, "roundhouse_model_worker_starts_total", source="cold") == 1


async def _infer(rt: ModelRuntime, model: str, item: Any) -> list[Any]:
    async with rt.lease(model) as lease:
        try:
            return [await lease.infer(item)]
        except Exception as e:  # noqa: BLE001 - the crash item's error is the outcome
            return [e]


# --- the host API against the fake NVML ---------------------------------------------------------------


async def test_a_service_with_only_its_spare_holds_no_device_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hide_libcuda(monkeypatch)
    nvml = one_gpu()  # another tenant holds 3 GiB of the card
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    family = Family(name="arith", service="arith-svc", backends=BACKENDS)
    catalog = Catalog(models=[spec("a", device="cuda:0", allow_cpu_fallback=True)])
    app = create_host_app(family, HostSettings(cache_dir=tmp_path), catalog)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=30) as c:
            async def listing() -> dict:
                return (await c.get("/v1/models")).json()

            spare = await _ready_spare(listing)
            assert spare["device_memory_bytes"] == 0
            assert (await c.post("/v1/models/a/load")).status_code == 200
            worker = (await listing())["worker_pid"]
            assert worker == spare["pid"]  # the spare became the worker ...
            nvml.gpus[0].processes[worker] = 1536 * MiB  # ... and its load created a context and took memory
            reply = (await c.post("/v1/models/a/unload")).json()
            assert reply["worker_stopped"] and reply["freed_bytes"] == 1536 * MiB
            assert not psutil.pid_exists(worker)  # the context went with the process, not into a spare
            spare = await _ready_spare(listing)
            body = await listing()
    assert spare["pid"] not in (worker, os.getpid()) and spare["device_memory_bytes"] == 0
    assert body["worker_pid"] is None and body["worker_memory_bytes"] == 0


async def _ready_spare(listing) -> dict:  # noqa: ANN001
    spare: dict = {}

    async def poll() -> None:
        nonlocal spare
        while not spare or spare.get("state") != "ready":
            spare = (await listing()).get("spare") or {}
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), DEADLINE_S)
    return spare
