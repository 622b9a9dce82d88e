"""Parking a torch module: its parameters and buffers moved to host memory, pinned where CUDA is present (so the
copy back is a DMA at the bus's speed, not a pageable staging copy), the device memory given back to the driver
through the caching allocator; the process keeps its CUDA context. Torch is imported only inside the functions,
in the worker, never in the HTTP process.

On a host without CUDA a model already lives in host memory: parking moves nothing and frees nothing, and is a
state the tests drive with the same code path."""

from __future__ import annotations

from typing import Any


def can_park_module(module: Any) -> bool:
    """Whether ``module`` can move to host memory: not when bitsandbytes quantized its weights on the GPU (they
    cannot leave it: ``.to`` refuses); anything already on the CPU parks trivially."""
    on_device = any(t.device.type != "cpu" for t in _tensors(module))
    quantized = any(getattr(module, flag, False) for flag in ("is_loaded_in_8bit", "is_loaded_in_4bit")) \
        or getattr(module, "hf_quantizer", None) is not None
    return not (on_device and quantized)


def park_module(module: Any) -> int:
    """Move ``module`` to host memory; return the bytes its tensors take there."""
    import torch

    on_device = any(t.device.type != "cpu" for t in _tensors(module))
    module.to("cpu")
    if on_device and torch.cuda.is_available():
        for t in _tensors(module):
            t.data = t.data.pin_memory()
        torch.cuda.empty_cache()
    return module_bytes(module)


def unpark_module(module: Any, device: str) -> None:
    """Copy ``module`` back to ``device`` (where it ran before it was parked)."""
    import torch

    if device.startswith("cuda"):
        module.to(device, non_blocking=True)
        torch.cuda.synchronize(device)
    else:
        module.to(device)


class ParksItsModule:
    """For a backend whose ``self.model`` is one torch module running on ``self.device`` (the caption backends):
    the whole module is parked in host memory and copied back on its next load. Put it before ``Backend`` among
    the bases, so its ``can_park`` is the one read."""

    model: Any
    device: str

    @property
    def can_park(self) -> bool:
        return self.model is not None and can_park_module(self.model)

    def park(self) -> int:
        return park_module(self.model)

    def unpark(self) -> None:
        unpark_module(self.model, self.device)


def module_bytes(module: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def _tensors(module: Any) -> list[Any]:
    return [*module.parameters(), *module.buffers()]
