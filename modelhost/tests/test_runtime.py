"""The model runtime with its real worker process, driven through ArithmeticBackend on the host meter.

Everything is real but the hardware: the worker child, the pipe protocol, batching, leases, the reaper and
the memory meter (host RSS stands in for device memory). ``tests.doubles.arithmetic`` doubles numbers and
simulates OOM, crashes, slow loads and failed loads; it really allocates ``alloc_mb``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psutil
import pytest

from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import ModelLeased, ModelNotFound, ModelNotReady, OutOfMemory, Unavailable
from modelhost.meter import HostMeter
from modelhost.metrics import HostMetrics
from modelhost.runtime import InferenceFailed, ModelLoadFailed, ModelRuntime
from modelhost.settings import HostSettings
from modelhost.states import ModelState

pytestmark = pytest.mark.app

S = ModelState
MiB = 1024 * 1024
DEADLINE_S = 10.0
BACKENDS = {"arith": "tests.doubles.arithmetic:ArithmeticBackend"}


def spec(model_id: str, **kw: Any) -> ModelSpec:
    options = kw.pop("options", {})
    return ModelSpec(id=model_id, family="arith", backend="arith", source="none", options=options, **kw)


@pytest.fixture
async def make_runtime(tmp_path: Path):
    made: list[ModelRuntime] = []

    def make(*specs: ModelSpec, **settings: Any) -> ModelRuntime:
        settings.setdefault("spare_worker", False)  # these tests count worker processes; test_spare.py has the spare
        rt = ModelRuntime(
            family="arith",
            catalog=Catalog(models=list(specs)),
            backends=BACKENDS,
            settings=HostSettings(cache_dir=tmp_path / "cache", **settings),
            meter=HostMeter(),
            metrics=HostMetrics("arith"),
            gpu_index=None,
        )
        rt.start()
        made.append(rt)
        return rt

    yield make
    for rt in made:
        await asyncio.wait_for(rt.close(), DEADLINE_S)


def sample(rt: ModelRuntime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"family": "arith", **labels}) or 0.0


def transitions(rt: ModelRuntime, model: str, old: ModelState, new: ModelState) -> float:
    return sample(rt, "roundhouse_model_transitions_total", model=model, from_state=old.value, to_state=new.value)


def worker_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children():
        try:
            if "modelhost.worker" in p.cmdline():
                out.append(p)
        except psutil.Error:
            pass
    return out


async def infer_each(rt: ModelRuntime, model: str, items: list[Any]) -> list[Any]:
    """Each item as its own concurrent request (lease + infer), as HTTP callers would; exceptions returned."""

    async def one(item: Any) -> Any:
        async with rt.lease(model) as lease:
            return await lease.infer(item)

    return await asyncio.gather(*(one(i) for i in items), return_exceptions=True)


# load ------------------------------------------------------------------------------------------------


async def test_concurrent_loads_coalesce_into_one_load_in_one_worker(make_runtime) -> None:
    rt = make_runtime(spec("a", options={"load_delay_s": 0.3}))
    entries = await asyncio.wait_for(asyncio.gather(*(rt.ensure_ready("a") for _ in range(10))), DEADLINE_S)
    assert all(e.state is S.READY for e in entries)
    assert transitions(rt, "a", S.UNLOADED, S.LOADING) == 1
    assert transitions(rt, "a", S.LOADING, S.READY) == 1
    assert sample(rt, "roundhouse_model_state", model="a", state="ready") == 1
    workers = worker_children()
    assert [w.pid for w in workers] == [rt.worker_pid]
    [result] = await infer_each(rt, "a", [5])
    assert result["value"] == 10 and result["pid"] == rt.worker_pid  # it ran in that worker


async def test_ready_means_warmed_up_with_measured_memory(make_runtime) -> None:
    rt = make_runtime(spec("a", options={"alloc_mb": 64}))
    entry = await rt.ensure_ready("a")
    assert entry.device == "cpu"
    assert entry.memory_bytes >= 60 * MiB
    assert entry.peak_memory_bytes >= entry.memory_bytes
    assert entry.load_s is not None and entry.warmup_s is not None
    assert sample(rt, "roundhouse_model_memory_bytes", model="a") == entry.memory_bytes
    view = rt.describe(entry)
    assert view.state == "ready" and view.memory_bytes == entry.memory_bytes


async def test_unknown_model_is_model_not_found(make_runtime) -> None:
    rt = make_runtime(spec("a"))
    with pytest.raises(ModelNotFound) as info:
        await rt.ensure_ready("nope")
    assert info.value.status == 404 and info.value.code == "model_not_found"
    with pytest.raises(ModelNotFound):
        await rt.unload("nope")


async def test_lease_on_unloaded_model_is_model_not_ready(make_runtime) -> None:
    rt = make_runtime(spec("a"))
    with pytest.raises(ModelNotReady) as info:
        async with rt.lease("a"):
            pass
    assert info.value.status == 503 and info.value.retry_after_s


async def test_load_failure_is_failed_with_reason_and_a_later_load_retries(make_runtime, tmp_path: Path) -> None:
    broken = tmp_path / "disk-is-broken"
    broken.touch()
    rt = make_runtime(spec("a", options={"fail_load_while_exists": str(broken)}))
    with pytest.raises(ModelLoadFailed) as info:
        await rt.ensure_ready("a")
    assert "weights are corrupt" in info.value.message
    entry = rt.entries["a"]
    assert entry.state is S.FAILED and "weights are corrupt" in entry.reason
    assert sample(rt, "roundhouse_model_load_failures_total", model="a") == 1
    assert rt.worker_pid is None  # a worker with no resident model is ended
    assert worker_children() == []

    broken.unlink()
    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert entry.state is S.READY and entry.reason is None
    assert transitions(rt, "a", S.FAILED, S.LOADING) == 1


async def test_warmup_failure_is_failed_with_reason(make_runtime) -> None:
    rt = make_runtime(spec("a", options={"fail_warmup": True}))
    with pytest.raises(ModelLoadFailed):
        await rt.ensure_ready("a")
    assert rt.entries["a"].state is S.FAILED
    assert "warm-up produced NaN" in rt.entries["a"].reason


async def test_gpu_model_that_would_run_on_cpu_is_refused(make_runtime) -> None:
    rt = make_runtime(spec("a", device="cuda"))
    with pytest.raises(ModelLoadFailed):
        await rt.ensure_ready("a")
    entry = rt.entries["a"]
    assert entry.state is S.FAILED
    assert "allow_cpu_fallback" in entry.reason and "cpu" in entry.reason
    assert rt.worker_pid is None


async def test_gpu_model_on_cpu_is_ready_when_fallback_allowed(make_runtime) -> None:
    rt = make_runtime(spec("a", device="cuda", allow_cpu_fallback=True))
    entry = await rt.ensure_ready("a")
    assert entry.state is S.READY and entry.device == "cpu"


# leases and unload ----------------------------------------------------------------------------------


async def test_unload_of_leased_model_is_refused(make_runtime) -> None:
    rt = make_runtime(spec("a"))
    await rt.ensure_ready("a")
    async with rt.lease("a"):
        with pytest.raises(ModelLeased) as info:
            await rt.unload("a")
        assert info.value.status == 409 and info.value.code == "model_in_use"
        assert rt.entries["a"].state is S.READY
    result = await rt.unload("a")
    assert result.state == "unloaded"


async def test_unload_with_drain_waits_for_lease_release_and_refuses_new_leases(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await rt.ensure_ready("a")
    leased, go = asyncio.Event(), asyncio.Event()

    async def request() -> Any:
        async with rt.lease("a") as lease:
            leased.set()
            await go.wait()
            return await lease.infer(4)  # a request already admitted still runs while draining

    holder = asyncio.create_task(request())
    await asyncio.wait_for(leased.wait(), DEADLINE_S)
    unloading = asyncio.create_task(rt.unload("a", drain=True))
    await wait_until(lambda: rt.entries["a"].draining, "the unload drains")
    assert not unloading.done()
    assert rt.entries["a"].state is S.READY

    with pytest.raises(ModelNotReady):
        async with rt.lease("a"):
            pass
    with pytest.raises(ModelNotReady):
        await rt.ensure_ready("a")
    assert not unloading.done()

    go.set()
    assert (await asyncio.wait_for(holder, DEADLINE_S))["value"] == 8
    result = await asyncio.wait_for(unloading, DEADLINE_S)
    assert result.state == "unloaded" and rt.entries["a"].state is S.UNLOADED


async def test_unload_during_load_waits_for_the_load_then_unloads(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a", options={"load_delay_s": 0.3}))
    loading = asyncio.create_task(rt.ensure_ready("a"))
    await wait_until(lambda: rt.entries["a"].state is S.LOADING, "the load begins")
    result = await asyncio.wait_for(rt.unload("a"), DEADLINE_S)
    await loading
    assert result.state == "unloaded" and rt.entries["a"].state is S.UNLOADED
    assert rt.worker_pid is None


async def test_unload_of_failed_model_clears_the_failure(make_runtime) -> None:
    rt = make_runtime(spec("a", options={"fail_load": True}))
    with pytest.raises(ModelLoadFailed):
        await rt.ensure_ready("a")
    result = await rt.unload("a")
    assert result.state == "unloaded" and rt.entries["a"].reason is None


async def test_reaper_unloads_idle_model_after_ttl_but_not_a_leased_one(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("held", ttl_s=0.3), spec("idle", ttl_s=0.3), reaper_interval_s=0.05)
    await rt.ensure_ready("held")  # loaded first, so its ttl runs out first
    await rt.ensure_ready("idle")
    release = asyncio.Event()

    async def hold() -> None:
        async with rt.lease("held"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await wait_until(lambda: rt.entries["held"].leases == 1, "the lease is held")
    await wait_until(lambda: rt.entries["idle"].state is S.UNLOADED, "the idle model is reaped")
    # The reaper has been past "held" (idle longer, checked first) and kept it: it is leased.
    assert rt.entries["held"].state is S.READY
    assert sample(rt, "roundhouse_model_unloads_total", model="idle", reason="ttl") == 1
    assert sample(rt, "roundhouse_model_unloads_total", model="held", reason="ttl") == 0

    release.set()
    await holder
    await wait_until(lambda: rt.entries["held"].state is S.UNLOADED, "the released model is reaped")
    assert rt.worker_pid is None


async def test_last_unload_ends_the_worker_and_frees_its_memory(make_runtime) -> None:
    rt = make_runtime(spec("a", options={"alloc_mb": 64}), spec("b", options={"alloc_mb": 32}))
    await asyncio.gather(rt.ensure_ready("a"), rt.ensure_ready("b"))
    pid = rt.worker_pid
    assert pid is not None and psutil.pid_exists(pid)

    first = await rt.unload("b")
    assert first.worker_stopped is False
    assert first.freed_bytes >= 30 * MiB  # the model's memory, freed inside the live worker
    assert rt.worker_pid == pid and psutil.pid_exists(pid)
    [result] = await infer_each(rt, "a", [1])
    assert result["pid"] == pid  # the other model still serves from the same worker

    last = await rt.unload("a")
    assert last.worker_stopped is True
    assert last.freed_bytes >= 64 * MiB
    assert not psutil.pid_exists(pid)
    assert rt.worker_pid is None
    assert sample(rt, "roundhouse_model_worker_up") == 0
    assert sample(rt, "roundhouse_model_memory_bytes", model="a") == 0


# inference ---------------------------------------------------------------------------------------------


async def test_items_are_batched_and_each_caller_gets_its_result(make_runtime) -> None:
    rt = make_runtime(spec("a", max_batch=8, max_wait_ms=200))
    await rt.ensure_ready("a")
    results = await infer_each(rt, "a", list(range(8)))
    assert [r["value"] for r in results] == [i * 2 for i in range(8)]
    assert {r["batch"] for r in results} == {8}
    assert sample(rt, "roundhouse_model_requests_total", model="a", outcome="ok") == 8


async def test_oom_splits_the_batch_and_every_item_succeeds(make_runtime) -> None:
    rt = make_runtime(spec("a", max_batch=8, max_wait_ms=200, options={"oom_above_batch": 2}))
    await rt.ensure_ready("a")
    results = await infer_each(rt, "a", list(range(8)))
    assert [r["value"] for r in results] == [i * 2 for i in range(8)]
    assert max(r["batch"] for r in results) <= 2  # each ran in a split half of a half
    assert sample(rt, "roundhouse_model_oom_events_total", model="a") > 0
    assert rt.entries["a"].state is S.READY


async def test_item_that_does_not_fit_alone_fails_only_itself(make_runtime) -> None:
    rt = make_runtime(spec("a", max_batch=8, max_wait_ms=200))
    await rt.ensure_ready("a")
    results = await infer_each(rt, "a", [1, 2, "oom", 3])
    assert isinstance(results[2], OutOfMemory)
    assert results[2].status == 503 and results[2].code == "out_of_memory" and results[2].retry_after_s
    assert [results[i]["value"] for i in (0, 1, 3)] == [2, 4, 6]
    assert rt.entries["a"].state is S.READY
    assert sample(rt, "roundhouse_model_requests_total", model="a", outcome="out_of_memory") == 1


async def test_bad_item_fails_only_itself(make_runtime) -> None:
    rt = make_runtime(spec("a", max_batch=8, max_wait_ms=200))
    await rt.ensure_ready("a")
    results = await infer_each(rt, "a", [1, "bad", 3])
    assert isinstance(results[1], InferenceFailed)
    assert results[1].status == 500 and results[1].code == "inference_failed"
    assert "cannot double" not in results[1].message  # the backend's exception text stays in the service's log
    assert results[0]["value"] == 2 and results[2]["value"] == 6
    assert rt.entries["a"].state is S.READY


async def test_worker_crash_fails_the_request_and_models_and_next_load_starts_a_new_worker(
    make_runtime, wait_until
) -> None:
    rt = make_runtime(spec("a", max_batch=8, max_wait_ms=100), spec("b"))
    await asyncio.gather(rt.ensure_ready("a"), rt.ensure_ready("b"))
    old_pid = rt.worker_pid
    results = await asyncio.wait_for(infer_each(rt, "a", [1, "crash", 2]), DEADLINE_S)
    for r in results:  # the whole batch was lost with the worker
        assert isinstance(r, Unavailable) and r.status == 503 and r.retry_after_s
    await wait_until(lambda: all(e.state is S.FAILED for e in rt.entries.values()), "both models are FAILED")
    for entry in rt.entries.values():
        assert "exited" in entry.reason
    assert rt.worker_pid is None and not psutil.pid_exists(old_pid)
    assert sample(rt, "roundhouse_model_worker_exits_total", cause="crashed") == 1
    with pytest.raises(ModelNotReady):
        async with rt.lease("a"):
            pass

    await asyncio.wait_for(rt.ensure_ready("a"), DEADLINE_S)
    assert rt.worker_pid not in (None, old_pid)
    [result] = await infer_each(rt, "a", [21])
    assert result["value"] == 42 and result["pid"] == rt.worker_pid
    # The dead worker's batcher has ended; only the new one collects.
    await wait_until(
        lambda: [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "batcher-a" and not t.done()] == ["batcher-a"],
        "only one batcher-a task is alive",
    )


async def test_closing_the_runtime_ends_the_worker_without_counting_a_crash(make_runtime, wait_until) -> None:
    rt = make_runtime(spec("a"))
    await rt.ensure_ready("a")
    worker = rt.workers.worker  # its exit callback arrives from the reader thread, possibly after close() returns
    await asyncio.wait_for(rt.close(), DEADLINE_S)
    assert not psutil.pid_exists(worker.pid)
    await wait_until(lambda: worker.dead, "the worker's exit has been handled")
    assert sample(rt, "roundhouse_model_worker_exits_total", cause="crashed") == 0
    assert transitions(rt, "a", S.READY, S.FAILED) == 0
