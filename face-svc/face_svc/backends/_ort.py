"""ONNX Runtime sessions for the insightface backend: providers, memory settings, the device really used.

Memory settings, and why (peers that run face models for days report memory that grows in steps until
an allocation fails; each setting below removes one cause):

* ``enable_mem_pattern = False``: ONNX Runtime plans and caches one memory pattern per distinct set of
  input shapes, and keeps them for the session's life. Recognition runs with as many faces as a batch holds (1, 2, ...
  ``rec_batch``), so every new count would add a pattern.
* ``enable_cpu_mem_arena`` (catalog option ``cpu_mem_arena``, default ``false``): the CPU arena keeps the
  most a run ever needed, and fragments under varying shapes. Off, tensors are plain allocations
  released after each run.
* CUDA provider ``arena_extend_strategy = kSameAsRequested`` (the default, kNextPowerOfTwo, rounds each
  extension of the GPU arena up to a power of two: a 1.1 GB request takes 2 GB).
* CUDA provider ``cudnn_conv_algo_search = HEURISTIC`` (option ``cudnn_conv_algo_search``): the default,
  EXHAUSTIVE, benchmarks every convolution for every new input shape, with large workspaces each time.
* Run option ``memory.enable_memory_arena_shrinkage`` (option ``arena_shrinkage``, default ``true``) for
  each arena that exists (the GPU's; the CPU's when enabled): after every run, the arena returns the
  chunks it grew by, so the next batch shape cannot strand the last one's.
* CUDA provider ``gpu_mem_limit`` (option ``gpu_mem_limit_mb``, default none): a hard cap on the arena.
* (Not ONNX Runtime's, but the same failure: _memory.py fixes glibc's mmap threshold in the worker, so
  large per-request buffers do not pile up in the heap.)

CPU use: idle intra-op threads do not spin (option ``intra_op_spinning``, default ``false``): spinning
takes CPU from the HTTP process and the other services on the box; ``threads`` sets the intra-op thread
count (default: ONNX Runtime's, one per core).

The device reported is read back from the session (``get_providers()``), never from what was asked:
ONNX Runtime silently falls back to the CPU provider when the CUDA provider cannot load (missing CUDA
or cuDNN libraries, or the CPU-only ``onnxruntime`` package installed over ``onnxruntime-gpu``).
"""

from __future__ import annotations

import logging
from typing import Any

from modelhost.catalog import ModelSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def gpu_index(spec: ModelSpec) -> int:
    return int(spec.device.split(":")[1]) if ":" in spec.device else 0


class SessionFactory:
    """Opens every session of one model with the same options, and says where they really run."""

    def __init__(self, spec: ModelSpec) -> None:
        import onnxruntime as ort

        self._ort = ort
        options = spec.options
        self.spec = spec
        self.cpu_arena = bool(options.get("cpu_mem_arena", False))
        self.shrink = bool(options.get("arena_shrinkage", True))
        self.threads = options.get("threads")
        self.spinning = bool(options.get("intra_op_spinning", False))
        self.index = gpu_index(spec)
        self.providers: list[Any] = [CPU]
        if spec.wants_gpu:
            if CUDA in ort.get_available_providers():
                cuda: dict[str, Any] = {
                    "device_id": self.index,
                    "arena_extend_strategy": "kSameAsRequested",
                    "cudnn_conv_algo_search": str(options.get("cudnn_conv_algo_search", "HEURISTIC")),
                }
                if options.get("gpu_mem_limit_mb") is not None:
                    cuda["gpu_mem_limit"] = int(options["gpu_mem_limit_mb"]) * 1024 * 1024
                self.providers = [(CUDA, cuda), CPU]
            else:
                log.warning("model %s: %s asked for, but this onnxruntime has no CUDA provider (providers: %s)",
                            spec.id, spec.device, ", ".join(ort.get_available_providers()))

    def session_options(self) -> Any:
        so = self._ort.SessionOptions()
        so.enable_mem_pattern = False
        so.enable_cpu_mem_arena = self.cpu_arena
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        if not self.spinning:
            # Idle intra-op threads spin for a while after each run by default: CPU taken from the HTTP process
            # and the other services on the box, for a few microseconds saved per run.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def open(self, path: str) -> Any:
        return self._ort.InferenceSession(path, sess_options=self.session_options(), providers=self.providers)

    def device_of(self, session: Any) -> str:
        """``cuda:N`` when the session's first provider is CUDA, else ``cpu``."""
        providers = session.get_providers()
        return f"cuda:{self.index}" if providers and providers[0] == CUDA else "cpu"

    def run_options(self, device: str) -> Any:
        ro = self._ort.RunOptions()
        arenas = []
        if self.shrink:
            if device.startswith("cuda"):
                arenas.append(f"gpu:{self.index}")
            if self.cpu_arena:
                arenas.append("cpu:0")
        if arenas:
            ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", ";".join(arenas))
        return ro


def is_out_of_memory(exc: BaseException) -> bool:
    """ONNX Runtime has no out-of-memory exception type: an allocation failure is a ``Fail`` or
    ``RuntimeException`` whose status text names it (BFC arena: "Failed to allocate memory"; CUDA: "out of
    memory", "CUBLAS_STATUS_ALLOC_FAILED"). The class is checked first, so only ORT's own errors are read."""
    if isinstance(exc, MemoryError):
        return True
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:  # pragma: no cover - onnxruntime is always there in this backend
        return False
    if not isinstance(exc, (state.Fail, state.RuntimeException, state.EPFail)):
        return False
    text = str(exc)
    return any(s in text for s in ("Failed to allocate memory", "out of memory", "ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"))

