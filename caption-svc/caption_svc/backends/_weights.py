"""Where a caption backend's weights come from and in which dtype they run (loading plumbing only;
pre- and post-processing stay in each backend's module)."""

from __future__ import annotations

import logging
import os
from typing import Any

from modelhost.catalog import ModelSpec

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")

TRANSFORMERS_PRELOAD = (
    "torch",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.processing_auto",
    "transformers.models.auto.image_processing_auto",
    "transformers.models.auto.tokenization_auto",
)
"""What every caption backend's load imports first (``Backend.preload``: a warm spare imports it ahead)."""


def torch_dtype(spec: ModelSpec, device: str) -> Any:
    """The torch dtype for ``spec.dtype`` on ``device``. CPU always runs float32: half precision there is
    slow or unsupported for these models, and tests on CPU must exercise the same code as a GPU."""
    import torch

    if spec.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"model {spec.id!r}: dtype {spec.dtype!r} is not supported by the {spec.backend} backend "
            f"(use one of {', '.join(SUPPORTED_DTYPES)})"
        )
    if device == "cpu":
        if spec.dtype != "float32":
            log.info("model %s: dtype %s asked for, running float32 on cpu", spec.id, spec.dtype)
        return torch.float32
    return getattr(torch, spec.dtype)


def pretrained_kwargs(spec: ModelSpec, cache_dir: str) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained(spec.source, ...)``: a local directory is read as is; a hub
    id is downloaded into ``cache_dir`` on first use (huggingface_hub shows its progress bars)."""
    if os.path.isdir(spec.source):
        return {"local_files_only": True}
    log.info("downloading %s into %s", spec.source, cache_dir)
    return {"cache_dir": cache_dir}


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
