"""Unit tests of the ONNX Runtime options the insightface backend opens its sessions with: the memory
settings for each device, and what a GPU request asks of the CUDA provider. Which providers this
onnxruntime build has is the hardware boundary, and is the one thing faked here."""

from __future__ import annotations

import onnxruntime
import pytest

from face_svc.backends._ort import CPU, CUDA, SessionFactory
from modelhost.catalog import ModelSpec

pytestmark = pytest.mark.unit

SHRINK = "memory.enable_memory_arena_shrinkage"


def spec(device: str = "cpu", **options) -> ModelSpec:  # noqa: ANN003
    return ModelSpec(id="m", family="face", backend="insightface", source="buffalo_l", device=device, options=options)


def test_cpu_sessions_use_no_memory_patterns_no_cpu_arena_and_no_spinning() -> None:
    so = SessionFactory(spec()).session_options()
    assert so.enable_mem_pattern is False and so.enable_cpu_mem_arena is False
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert SessionFactory(spec()).providers == [CPU]


def test_options_turn_the_cpu_arena_and_spinning_back_on_and_set_threads() -> None:
    so = SessionFactory(spec(cpu_mem_arena=True, intra_op_spinning=True, threads=3)).session_options()
    assert so.enable_cpu_mem_arena is True and so.intra_op_num_threads == 3
    with pytest.raises(RuntimeError):  # ONNX Runtime's way of saying the entry is not set
        so.get_session_config_entry("session.intra_op.allow_spinning")


def test_gpu_request_asks_cuda_for_bounded_arena_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    factory = SessionFactory(spec("cuda:1", gpu_mem_limit_mb=2048))
    (name, cuda), cpu = factory.providers
    assert (name, cpu) == (CUDA, CPU)
    assert cuda == {"device_id": 1, "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC",
                    "gpu_mem_limit": 2048 * 2**20}


def test_gpu_request_without_a_cuda_build_opens_cpu_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    assert SessionFactory(spec("cuda")).providers == [CPU]


def test_arenas_shrink_after_each_run_where_they_exist() -> None:
    assert SessionFactory(spec("cuda:1")).run_options("cuda:1").get_run_config_entry(SHRINK) == "gpu:1"
    both = SessionFactory(spec("cuda:0", cpu_mem_arena=True)).run_options("cuda:0")
    assert both.get_run_config_entry(SHRINK) == "gpu:0;cpu:0"
    # no CPU arena: naming it would make every run fail; and none at all when shrinkage is off
    for unset in (SessionFactory(spec()).run_options("cpu"),
                  SessionFactory(spec("cuda:0", arena_shrinkage=False)).run_options("cuda:0")):
        with pytest.raises(RuntimeError):
            unset.get_run_config_entry(SHRINK)
