"""A load that runs out of device memory: ``modelhost.oom`` tells it from other failures, and the
runtime answers it 503 ``out_of_memory`` (retryable) instead of 500 ``model_load_failed``, with the
model left loadable. The runtime part runs the real worker process on the host meter with
``tests.doubles.arithmetic``, which stands in for a GPU that is full."""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path

import pytest

from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import LoadOutOfMemory, ModelLoadFailed
from modelhost.meter import HostMeter
from modelhost.metrics import HostMetrics
from modelhost.oom import is_out_of_memory, load_error
from modelhost.runtime import ModelRuntime
from modelhost.settings import HostSettings
from modelhost.states import ModelState


@pytest.mark.unit
def test_out_of_memory_is_told_by_class_or_by_the_frameworks_own_texts() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))  # torch < 1.13
    assert is_out_of_memory(RuntimeError("CUDA failed with error out of memory"))  # CTranslate2
    assert not is_out_of_memory(RuntimeError("weights are corrupt"))
    assert not is_out_of_memory(ValueError("CUDA out of memory"))  # only the classes that carry it are read
    assert not is_out_of_memory(KeyError("x"))


@pytest.mark.unit
def test_a_wrapped_out_of_memory_is_still_told() -> None:
    try:
        try:
            raise MemoryError("no room")
        except MemoryError as e:
            raise OSError("the backend could not load its weights") from e
    except OSError as wrapped:
        assert is_out_of_memory(wrapped)


@pytest.mark.unit
def test_torch_and_onnxruntime_classes_are_read_only_when_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    class OutOfMemoryError(RuntimeError):
        pass

    class Fail(Exception):
        pass

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)))
    monkeypatch.setitem(sys.modules, "onnxruntime.capi.onnxruntime_pybind11_state",
                        types.SimpleNamespace(Fail=Fail, RuntimeException=None, EPFail=None))
    assert is_out_of_memory(OutOfMemoryError("Tried to allocate 20.00 MiB"))
    assert is_out_of_memory(Fail("BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(Fail("Got invalid dimensions for input"))


@pytest.mark.unit
def test_the_error_of_a_failed_load_says_which_kind_it_was() -> None:
    oom = load_error("a", "RuntimeError: CUDA out of memory", out_of_memory=True)
    assert isinstance(oom, LoadOutOfMemory) and oom.status == 503 and oom.code == "out_of_memory"
    assert oom.retryable and oom.retry_after_s
    broken = load_error("a", "RuntimeError: weights are corrupt", out_of_memory=False)
    assert isinstance(broken, ModelLoadFailed) and broken.status == 500


@pytest.mark.app
async def test_a_load_out_of_memory_is_503_out_of_memory_and_the_model_loads_once_there_is_room(tmp_path: Path) -> None:
    full = tmp_path / "gpu-is-full"
    full.touch()
    spec = ModelSpec(id="a", family="arith", backend="arith", source="none", options={"oom_load_while_exists": str(full)})
    rt = ModelRuntime(family="arith", catalog=Catalog(models=[spec]),
                      backends={"arith": "tests.doubles.arithmetic:ArithmeticBackend"},
                      settings=HostSettings(cache_dir=tmp_path / "cache", spare_worker=False), meter=HostMeter(),
                      metrics=HostMetrics("arith"), gpu_index=None)
    rt.start()
    try:
        with pytest.raises(LoadOutOfMemory) as info:
            await asyncio.wait_for(rt.ensure_ready("a"), 30)
        assert info.value.status == 503 and info.value.code == "out_of_memory"
        assert "CUDA out of memory" in info.value.message
        full.unlink()  # room again
        await asyncio.wait_for(rt.ensure_ready("a"), 30)
        assert rt.entries["a"].state is ModelState.READY
    finally:
        await asyncio.wait_for(rt.close(), 30)
