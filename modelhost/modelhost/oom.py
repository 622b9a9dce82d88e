"""Whether an exception means the device ran out of memory, whichever framework raised it.

A load (or a warm-up) that runs out of device memory is not a broken model: the memory is held by
something else (another model, a process not ours), and the gateway's coordinator can make room and
try again. So the worker classifies a failed load with ``is_out_of_memory`` and the service answers
it as ``LoadOutOfMemory`` (503 ``out_of_memory``, retryable), not 500 ``model_load_failed``.

By class where the framework has one: ``MemoryError`` (host memory), torch's
``torch.cuda.OutOfMemoryError``. ONNX Runtime has no class for it: its own ``Fail`` /
``RuntimeException`` / ``EPFail`` say it in their text (the BFC arena's "Failed to allocate memory",
CUDA's "out of memory", cuBLAS/cuDNN "ALLOC_FAILED"); only ORT's own classes are read. CTranslate2
raises a plain ``RuntimeError`` ("CUDA failed with error out of memory"), as torch did before 1.13
("CUDA out of memory"): a ``RuntimeError`` is read for those texts only. The causes an exception
was raised from (``__cause__``, ``__context__``) are read too, so a backend that wraps the
framework's error is still understood. A framework not imported is never imported here.
"""

from __future__ import annotations

import sys

from .errors import LoadOutOfMemory, ModelLoadFailed, RoundhouseError

ORT_TEXTS = ("Failed to allocate memory", "out of memory", "ALLOC_FAILED")
RUNTIME_ERROR_TEXTS = ("CUDA out of memory", "CUDA failed with error out of memory", "CUDA error: out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if _one(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _one(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if isinstance(oom, type) and isinstance(exc, oom):
        return True
    ort = sys.modules.get("onnxruntime.capi.onnxruntime_pybind11_state")
    ort_errors = tuple(c for c in (getattr(ort, n, None) for n in ("Fail", "RuntimeException", "EPFail")) if isinstance(c, type))
    if ort_errors and isinstance(exc, ort_errors):
        return any(t in str(exc) for t in ORT_TEXTS)
    if type(exc) is RuntimeError:
        return any(t in str(exc) for t in RUNTIME_ERROR_TEXTS)
    return False


def load_error(model: str, reason: str | None, *, out_of_memory: bool) -> RoundhouseError:
    """The error a request gets for ``model``'s failed load: 503 ``out_of_memory`` (retryable) when the
    device had no room for it, else 500 ``model_load_failed``."""
    if out_of_memory:
        return LoadOutOfMemory(f"model {model} ran out of device memory while loading: {reason}")
    return ModelLoadFailed(f"model {model} failed to load: {reason}")
