"""Qwen2.5-VL captioning (``AutoModelForImageTextToText``, e.g. Qwen/Qwen2.5-VL-3B-Instruct).

Prompts: an instruction in a chat turn after the image, "Describe this image in one sentence." unless the
item or the catalog's ``prompt`` option says otherwise. The processor's chat template builds the turn and
the assistant's generation prompt; the caption is the assistant's reply, decoded from the new tokens only.

Batching: the model is decoder-only, so chat turns of different lengths are padded on the left (the
multimodal rotary positions are computed from the attention mask, so padding does not shift them) and one
``generate`` runs the whole batch. Items asking for fewer new tokens than the batch's largest are cut after
greedy decoding, which gives the same tokens as stopping early.

Length: unlike BLIP's and BLIP-2's decoders, Qwen2.5-VL has no position table to run off: its rotary
positions are computed for any length, so ``max_new_tokens`` is not clamped here. Its context (128,000
positions in the released models) holds the longest prompt the API takes plus 512 new tokens and the
vision tokens of even an unbounded image; the tiny test model's nominal 512 is exceeded without error.

Options (catalog ``options``): ``max_new_tokens`` (default 30), ``prompt``, and ``max_pixels``: the most
pixels an image is resized to before it becomes vision tokens (one token per 28x28 pixels). The model's
own limit is about 12.8 million pixels, some 16,000 tokens for a large photo; a few hundred thousand
(``max_pixels: 401408`` is 512 tokens) keeps a 3B model inside an 8 GB GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from modelhost.backend import Backend, torch_device
from modelhost.catalog import ModelSpec
from modelhost.park_torch import ParksItsModule
from modelhost.pretrained import TRANSFORMERS_PRELOAD, pretrained_kwargs, torch_dtype

from ..items import CaptionItem
from ._weights import load_pretrained

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 30
DEFAULT_PROMPT = "Describe this image in one sentence."


class QwenVLCaptioner(ParksItsModule, Backend):  # parked whole: modelhost.park_torch
    preload = (
        *TRANSFORMERS_PRELOAD,
        "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl",
        "transformers.models.qwen2_5_vl.processing_qwen2_5_vl",
        "transformers.models.qwen2_vl.image_processing_qwen2_vl",
        "transformers.models.qwen2_vl.video_processing_qwen2_vl",
        "transformers.models.qwen2.tokenization_qwen2",
    )

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"
        self.dtype: Any = None
        self.max_new_tokens = int(spec.options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.default_prompt: str = spec.options.get("prompt") or DEFAULT_PROMPT
        self.max_pixels: int | None = spec.options.get("max_pixels")
        self.image_kwargs: dict[str, Any] = {}

    def load(self) -> str:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = torch_device(self.spec)
        self.dtype = torch_dtype(self.spec, device)
        kwargs = pretrained_kwargs(self.spec, self.cache_dir)
        self.processor = AutoProcessor.from_pretrained(self.spec.source, **kwargs)
        self.processor.tokenizer.padding_side = "left"
        if self.max_pixels is not None:
            # Qwen2-VL's image size is in pixels: shortest_edge is min_pixels, longest_edge is max_pixels.
            min_pixels = min(int(self.processor.image_processor.size["shortest_edge"]), int(self.max_pixels))
            self.image_kwargs = {"size": {"shortest_edge": min_pixels, "longest_edge": int(self.max_pixels)}}
        model = load_pretrained(AutoModelForImageTextToText, self.spec, device, self.dtype, kwargs)
        self.model = model.eval()
        self.device = str(next(self.model.parameters()).device)
        return self.device

    def warmup(self) -> None:
        image = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
        [result] = self.infer([CaptionItem(image=image)])
        if not isinstance(result["caption"], str):
            raise RuntimeError(f"warm-up produced {result!r}, not a caption")

    def infer(self, items: list[CaptionItem]) -> list[dict[str, Any]]:
        import torch

        images = [_rgb(item.image) for item in items]
        texts = [self._chat_turn(item.prompt or self.default_prompt) for item in items]
        limits = [item.max_new_tokens or self.max_new_tokens for item in items]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt", **self.image_kwargs)
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max(limits), do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        eos_ids = _ids(self.model.generation_config.eos_token_id)
        return [_caption(self.processor, ids[:limit], eos_ids) for ids, limit in zip(new_tokens, limits)]

    def _chat_turn(self, prompt: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def close(self) -> None:
        on_gpu = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _ids(value: int | list[int] | None) -> set[int]:
    if value is None:
        return set()
    return {value} if isinstance(value, int) else set(value)


def _caption(processor: Any, new_ids: list[int], eos_ids: set[int]) -> dict[str, Any]:
    """Decode one row of new tokens: up to and including the first end of sequence; padding after it
    (present when other rows of the batch ran longer) is not counted."""
    for n, token in enumerate(new_ids):
        if token in eos_ids:
            new_ids = new_ids[: n + 1]
            break
    text = processor.decode(new_ids, skip_special_tokens=True).strip()
    return {"caption": text, "tokens": len(new_ids)}
