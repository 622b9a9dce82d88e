"""The contract between a family's model wrapper and the worker process that runs it.

A family writes one small class per backend (``BlipCaptioner``, ``WhisperTranscriber`` ...) on this
base. It is imported and instantiated only inside the worker child process, never in the HTTP
process, so the HTTP process never imports torch or onnxruntime and never holds device memory.

The worker calls, in order: ``load()`` (returns the device really used), ``warmup()`` (one real
inference), then ``infer(items)`` many times, and finally ``close()``. A backend that can (``can_park``) may
be parked between: ``park()`` moves its weights to host memory and releases their device memory, ``unpark()``
copies them back (``modelhost.park``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

from .catalog import ModelSpec


class Backend(ABC):
    preload: tuple[str, ...] = ()
    """Modules a warm spare worker imports before any load of this backend: its framework (``torch``,
    ``transformers.models.blip.modeling_blip``, ``onnxruntime`` ...), so the load that takes the spare finds
    them imported. Importing them must not touch a device: no CUDA context, no device memory (torch,
    onnxruntime and ctranslate2 create theirs at the first tensor or session, in ``load()``)."""

    @classmethod
    def prepare(cls) -> None:
        """Process-wide work a warm spare does for this backend after importing ``preload``, ahead of any
        load: caches that a first load or warm-up would otherwise build (a tokenizer's tables, a JIT
        compile). Never touches a device and never reads a model's weights. Default: nothing."""

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        self.spec = spec
        self.cache_dir = cache_dir

    @abstractmethod
    def load(self) -> str:
        """Load the weights onto ``self.spec.device`` (or where it would really run) and return
        the device the model really runs on, read back from the framework: e.g. ``"cuda:0"``,
        ``"cpu"``. Never lie here: the runtime refuses a silent CPU fallback based on this value."""

    @abstractmethod
    def warmup(self) -> None:
        """Run one real inference on a synthetic input; raise if it fails."""

    @abstractmethod
    def infer(self, items: list[Any]) -> list[Any]:
        """Run one batch. Return one result per item, in order. Results must be picklable."""

    def close(self) -> None:
        """Drop every reference to the weights. The worker collects garbage afterwards."""

    can_park: bool = False
    """Whether ``park``/``unpark`` are implemented: torch modules (``modelhost.park_torch``) and CTranslate2
    models (``unload_model(to_cpu=True)``) can; ONNX Runtime sessions (face, embed's ONNX models), dlib,
    pocketsphinx, and engines run as subprocesses (flite, espeak-ng) cannot: they are unloaded instead."""

    def park(self) -> int | None:
        """Move the weights to host memory (pinned where CUDA is present) and release their device memory; the
        worker keeps its CUDA context. Return the host bytes the parked weights take, or None for the worker to
        measure its resident set's growth. Only called while no inference runs."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    def unpark(self) -> None:
        """Copy the parked weights back to the device they were loaded on; the worker then runs the warm-up."""
        raise NotImplementedError(f"{type(self).__name__} cannot park")

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the device ran out of memory. Override for frameworks with their
        own error types; the default knows MemoryError and torch's OutOfMemoryError by class."""
        if isinstance(exc, MemoryError):
            return True
        torch = _loaded_module("torch")
        if torch is not None:
            oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
            if oom is not None and isinstance(exc, oom):
                return True
        return False


def _loaded_module(name: str) -> Any:
    import sys

    return sys.modules.get(name)


def torch_device(spec: ModelSpec) -> str:
    """The torch device a model asked for would really get: the asked GPU when CUDA is usable,
    else ``"cpu"`` (the runtime then refuses it unless the catalog allows the fallback)."""
    if not spec.wants_gpu:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return spec.device if ":" in spec.device else "cuda:0"


def preload_modules(paths: list[str]) -> tuple[list[str], dict[str, str]]:
    """Import each backend's module and the modules its class names in ``preload``, then run its
    ``prepare``. Returns what was imported (and prepared: ``path.prepare()``) and, for each step that
    failed, why (a load of that backend then does the work itself, or fails and says so)."""
    imported: list[str] = []
    failed: dict[str, str] = {}
    for path in paths:
        try:
            cls = import_backend(path)
        except Exception as e:
            failed[path] = f"{type(e).__name__}: {e}"
            continue
        for name in [path.partition(":")[0], *cls.preload]:
            if name in imported or name in failed:
                continue
            try:
                importlib.import_module(name)
                imported.append(name)
            except Exception as e:
                failed[name] = f"{type(e).__name__}: {e}"
        if cls.prepare.__func__ is not Backend.prepare.__func__:
            try:
                cls.prepare()
                imported.append(f"{path}.prepare()")
            except Exception as e:
                failed[f"{path}.prepare()"] = f"{type(e).__name__}: {e}"
    return imported, failed


def import_backend(path: str) -> type[Backend]:
    """Import ``"package.module:ClassName"``."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"backend path {path!r} must look like 'package.module:ClassName'")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{path} is not a modelhost Backend")
    return cls
