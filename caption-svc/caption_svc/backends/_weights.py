"""In which precision a caption backend's weights run, quantised or not (loading plumbing only; the dtype and
where the weights come from are ``modelhost.pretrained``'s, and pre- and post-processing stay in each
backend's module).

Precision: a catalog entry's ``options.quantization`` stores the weights of its linear layers in fewer bits,
so a big model fits a small card (README: "8 GB cards"). Absent, the weights run in ``dtype``.

=========  ==========================================  ===============================================
value      on CUDA                                     on CPU
=========  ==========================================  ===============================================
``int8``   bitsandbytes LLM.int8 (``load_in_8bit``)    torchao int8 weight-only (``Int8WeightOnlyConfig``)
``int4``   bitsandbytes NF4 (``load_in_4bit``),        refused: bitsandbytes' 4-bit kernels are for CUDA.
           computing in ``dtype``                      A cpu model is listed unavailable with the reason
                                                       (``missing``); a CUDA model that falls back to the
                                                       CPU fails its load with it
=========  ==========================================  ===============================================

An unknown value is refused when the service reads its catalog (``check_options``: the service does not
start) and again at load. The output embedding (tied to the input one in these models) keeps ``dtype`` in
both libraries. The catalog's ``memory_estimate_mb`` is per entry, so a quantised variant is its own entry
with its own estimate, and its measured footprint is remembered under its own id.
"""

from __future__ import annotations

import logging
from typing import Any

from modelhost.catalog import ModelSpec

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "int4")


def quantization(spec: ModelSpec) -> str | None:
    """``options.quantization`` of ``spec`` (None: weights in ``dtype``); ValueError names the values allowed."""
    value = spec.options.get("quantization")
    if value is None or value in QUANTIZATIONS:
        return value
    raise ValueError(
        f"model {spec.id!r}: quantization {value!r} is not supported by the caption backends (use "
        f"{' or '.join(QUANTIZATIONS)}, or leave it out for {spec.dtype} weights)"
    )


def check_options(specs: list[ModelSpec]) -> None:
    """Refuse a catalog whose caption options cannot be honoured on any device (an unknown quantization)."""
    for spec in specs:
        quantization(spec)


def missing(spec: ModelSpec) -> str | None:
    """Why ``spec`` cannot run here, known from the catalog alone (``Family.missing``: the model is listed
    ``unavailable`` with this reason, and a load is a 503): int4 weights on a model placed on the CPU. A CUDA
    model that falls back to the CPU at load fails that load with the same reason."""
    if quantization(spec) == "int4" and not spec.wants_gpu:
        return _int4_on_cpu(spec.id, "cpu")
    return None


def _int4_on_cpu(model_id: str, device: str) -> str:
    return (f"model {model_id!r}: quantization int4 needs a CUDA device (bitsandbytes' 4-bit kernels), and this "
            f"model runs on {device}: use quantization int8 on cpu")


def load_pretrained(model_cls: Any, spec: ModelSpec, device: str, dtype: Any, kwargs: dict[str, Any]) -> Any:
    """``model_cls.from_pretrained(spec.source)`` placed on ``device`` in ``dtype``, its weights quantised as
    ``options.quantization`` asks (the table in this module's docstring)."""
    bits = quantization(spec)
    if bits is None:
        return model_cls.from_pretrained(spec.source, dtype=dtype, **kwargs).to(device)
    if device.startswith("cuda"):
        from transformers import BitsAndBytesConfig

        if bits == "int8":
            config = BitsAndBytesConfig(load_in_8bit=True)
        else:
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                        bnb_4bit_use_double_quant=True)
        # bitsandbytes places the weights as it quantises them: a device map, never .to() afterwards.
        return model_cls.from_pretrained(spec.source, dtype=dtype, quantization_config=config,
                                         device_map={"": device}, **kwargs)
    if bits == "int4":
        raise ValueError(_int4_on_cpu(spec.id, device))
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = model_cls.from_pretrained(spec.source, dtype=dtype, **kwargs).to(device)
    # The float weights are views of the checkpoint's mapping: the pages quantisation reads stay resident
    # until the last view goes (``_own_storage``), so the load's peak is the float weights plus their int8
    # copy; what stays after it is the int8 copy. A linear layer that shares its weight with an embedding (a
    # tied output embedding) is left alone: quantising it would keep the float table and add an int8 copy.
    _large_blocks_unmapped()
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    quantize_(model, Int8WeightOnlyConfig(),
              filter_fn=lambda m, _: isinstance(m, torch.nn.Linear) and id(m.weight) not in tied)
    _own_storage(model)
    log.info("model %s: linear weights quantised to int8 (torchao, weight-only) on %s", spec.id, device)
    return model


def _own_storage(model: Any) -> None:
    """Copy every plain tensor left in ``model`` (what was not quantised) into memory of its own. Loaded
    weights are views of the checkpoint file's mapping, and one view left alive keeps the pages the
    quantisation read resident: the float weights' memory is given back only when no view holds it."""
    import torch

    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) not in seen and type(param.data) is torch.Tensor:
                param.data = param.data.clone()
            seen.add(id(param))
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and id(buffer) not in seen and type(buffer) is torch.Tensor:
                module._buffers[name] = buffer.clone()
            seen.add(id(buffer))


def warm_pretrained(model_cls: Any, config: Any, **generate_inputs: Any) -> None:
    """A warm spare's ``prepare`` for a transformers backend: a throwaway model of ``config`` (a tiny width, random
    weights) saved to a temporary directory, loaded back with ``from_pretrained`` and run once with ``generate`` on
    the CPU. A process's first ``from_pretrained`` compiles transformers' weight-renaming patterns (0.4 s of a 0.5 s
    first load of tiny-blip here) and its first ``generate`` sets up torch's CPU kernels; a live worker has both.
    No device, and no real model's weights."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory(prefix="roundhouse-spare-") as d:
        model_cls(config).save_pretrained(d)
        model = model_cls.from_pretrained(d, dtype=torch.float32, local_files_only=True).eval()
    with torch.inference_mode():
        model.generate(**generate_inputs, max_new_tokens=2, do_sample=False)


def _large_blocks_unmapped() -> None:
    """Have glibc map every block of 1 MiB or more on its own, and unmap it when freed (a fixed
    ``M_MMAP_THRESHOLD``). Int8 weight-only layers on CPU make a float copy of their weight at every forward
    pass; with glibc's default, a threshold that rises after the first large free, those copies stay in the
    heap once freed, and the worker's resident set (what the meter reads on CPU) would keep the float
    weights' size after all. Applies to the whole worker process: a system call per large block, small beside
    the forward pass that needs it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
