"""BLIP-2 captioning (``Blip2ForConditionalGeneration``, e.g. Salesforce/blip2-opt-2.7b).

Prompts: optional. Without one the language model starts from the image alone and writes a caption; with
one ("Question: what is in the picture? Answer:") it continues that text. Either way the caption is only
the generated continuation, decoded from the new tokens.

Batching: the language model is decoder-only, so prompts of different lengths are padded on the left (its
positions follow the attention mask, so padding does not shift them) and one ``generate`` runs the whole
batch. Items asking for fewer new tokens than the batch's largest are cut after greedy decoding, which
gives the same tokens as stopping early.

Length: the language model (OPT) has a learned table of ``max_position_embeddings`` positions (2048 in the
released models, 128 in the tiny test model), shared by the image's query tokens, the prompt and the
caption; a position past it is an IndexError inside ``generate``. So an item's ``max_new_tokens`` is
clamped to the room its prompt leaves (the tokens reported are those really generated), and a prompt that
leaves none is a ``PromptFillsContext``, found before anything is generated. Every row of a ``generate``
runs as many steps as the batch's largest limit, from its own prompt length, so a batch that would carry a
long prompt past the end runs as one ``generate`` per prompt length instead (``_runs``).
"""

from __future__ import annotations

import logging
from typing import Any

from PIL import Image

from modelhost.backend import Backend, torch_device
from modelhost.catalog import ModelSpec
from modelhost.park_torch import ParksItsModule
from modelhost.pretrained import TRANSFORMERS_PRELOAD, pretrained_kwargs, torch_dtype

from ..items import CaptionItem, PromptFillsContext
from ._weights import load_pretrained

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 30


class Blip2Captioner(ParksItsModule, Backend):  # parked whole: modelhost.park_torch
    preload = (
        *TRANSFORMERS_PRELOAD,
        "transformers.models.blip_2.modeling_blip_2",
        "transformers.models.blip_2.processing_blip_2",
        "transformers.models.blip.image_processing_blip",
        "transformers.models.opt.modeling_opt",
        "transformers.models.gpt2.tokenization_gpt2",
    )

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"
        self.dtype: Any = None
        self.context_tokens = 0
        """Positions of the language model: query tokens, prompt (its BOS included) and caption together."""
        self.max_new_tokens = int(spec.options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.default_prompt: str | None = spec.options.get("prompt")

    def load(self) -> str:
        from transformers import AutoProcessor, Blip2ForConditionalGeneration

        device = torch_device(self.spec)
        self.dtype = torch_dtype(self.spec, device)
        kwargs = pretrained_kwargs(self.spec, self.cache_dir)
        self.processor = AutoProcessor.from_pretrained(self.spec.source, **kwargs)
        self.processor.tokenizer.padding_side = "left"
        model = load_pretrained(Blip2ForConditionalGeneration, self.spec, device, self.dtype, kwargs)
        # generate() runs the language model, whose own generation config is a default one: give it the
        # config saved with the model (token limits, suppressed tokens, beams).
        model.language_model.generation_config = model.generation_config
        self.context_tokens = int(model.config.text_config.max_position_embeddings)
        self.model = model.eval()
        self.device = str(next(self.model.parameters()).device)
        return self.device

    def warmup(self) -> None:
        image = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
        [result] = self.infer([CaptionItem(image=image)])
        if not isinstance(result, dict) or not isinstance(result["caption"], str):
            raise RuntimeError(f"warm-up produced {result!r}, not a caption")

    def infer(self, items: list[CaptionItem]) -> list[dict[str, Any] | PromptFillsContext]:
        images = [_rgb(item.image) for item in items]
        prompts = [_prompt(item.prompt, self.default_prompt) for item in items]
        inputs = self._inputs(images, prompts)
        # The positions an item's prompt takes: its row without the left padding (query tokens included).
        lengths = [int(n) for n in inputs["attention_mask"].sum(dim=1).tolist()]
        results: list[Any] = [None] * len(items)
        limits: dict[int, int] = {}
        for i, (item, length) in enumerate(zip(items, lengths)):
            room = self.context_tokens - length
            if room < 1:
                results[i] = PromptFillsContext(prompt_tokens=length, context_tokens=self.context_tokens)
            else:
                limits[i] = min(item.max_new_tokens or self.max_new_tokens, room)
        for run in _runs(lengths, limits, self.context_tokens):
            if len(run) < len(items):  # padded again: a shorter padding gives the same tokens
                run_inputs = self._inputs([images[i] for i in run], [prompts[i] for i in run])
            else:
                run_inputs = inputs
            for i, result in zip(run, self._generate(run_inputs, [limits[i] for i in run])):
                results[i] = result
        return results

    def _inputs(self, images: list[Image.Image], prompts: list[str]) -> Any:
        return self.processor(images=images, text=prompts, padding=True, return_tensors="pt")

    def _generate(self, inputs: Any, limits: list[int]) -> list[dict[str, Any]]:
        import torch

        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max(limits), do_sample=False)
        # The language model returns the prompt (image placeholders included) followed by the new tokens.
        new_tokens = out[:, inputs["input_ids"].shape[1] :].tolist()
        eos_ids = _ids(self.model.generation_config.eos_token_id)
        return [_caption(self.processor, ids[:limit], eos_ids) for ids, limit in zip(new_tokens, limits)]

    def close(self) -> None:
        on_gpu = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _prompt(prompt: str | None, default: str | None) -> str:
    """The text after the image: the item's prompt, else the catalog's, else none (an empty text still
    gets the tokenizer's BOS, which is where BLIP-2 starts a plain caption)."""
    return prompt if prompt is not None else (default or "")


def _runs(lengths: list[int], limits: dict[int, int], context_tokens: int) -> list[list[int]]:
    """The items to caption (the keys of ``limits``, each already clamped to its own room) as ``generate``
    calls that stay inside the context. A call runs every row for its largest limit, from that row's prompt
    length (positions follow the attention mask, not the padding), so it fits when its longest prompt plus
    its largest limit does: the whole batch is one call when that holds, else one call per prompt length
    (rows of one length always fit together). Only long generations near the context's end split."""
    todo = list(limits)
    if not todo:
        return []
    if max(lengths[i] for i in todo) + max(limits.values()) <= context_tokens:
        return [todo]
    by_length: dict[int, list[int]] = {}
    for i in todo:
        by_length.setdefault(lengths[i], []).append(i)
    return list(by_length.values())


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
