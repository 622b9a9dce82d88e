"""Loading plumbing every transformers backend shares (caption, embed): the dtypes it runs, what its load
imports first, and where ``from_pretrained`` reads from. Torch is imported only inside the functions: the
gateway imports modelhost and has no torch. Pre- and post-processing stay in each family's backends."""

from __future__ import annotations

import logging
import os
from typing import Any

from .catalog import ModelSpec

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")

TRANSFORMERS_PRELOAD = (
    "torch",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.processing_auto",
    "transformers.models.auto.image_processing_auto",
    "transformers.models.auto.tokenization_auto",
)
"""What a transformers backend's load imports first (``Backend.preload``: a warm spare imports it ahead)."""


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
