"""BLIP captioning (``BlipForConditionalGeneration``, e.g. Salesforce/blip-image-captioning-large).

Prompts: BLIP's text decoder continues a text prefix ("a photography of"). The prefix conditions the
caption but is not repeated in it: the caption is only the generated continuation, decoded from the new
tokens (not by cutting the prefix off the decoded string, which the tokenizer's lower-casing and spacing
would defeat).

Batching: BLIP's decoder has absolute positions and the model cuts the prompt's last token (its [SEP]) by
column, so prompts of different lengths cannot be padded into one tensor. A batch is run as one
``generate`` per distinct prompt, which in bulk captioning (one prompt, or none, for every image) is one
call. Items asking for fewer new tokens than the group's largest are cut after greedy decoding, which gives
the same tokens as stopping early.

Length: the text decoder has a learned table of ``max_position_embeddings`` positions (512 in the released
models, 64 in the tiny test model), shared by the prompt and the caption; a position past it is an
IndexError inside ``generate``. So an item's ``max_new_tokens`` is clamped to the room the prompt leaves
(the tokens reported are those really generated), and a prompt that leaves none is a ``PromptFillsContext``,
found before anything is generated. A group shares one prompt, hence one room.
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
from ._weights import load_pretrained, warm_pretrained

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 30


class BlipCaptioner(ParksItsModule, Backend):  # parked whole: modelhost.park_torch
    preload = (
        *TRANSFORMERS_PRELOAD,
        "transformers.models.blip.modeling_blip",
        "transformers.models.blip.processing_blip",
        "transformers.models.blip.image_processing_blip",
        "transformers.models.bert.tokenization_bert",
    )

    @classmethod
    def prepare(cls) -> None:
        import torch
        from transformers import BlipConfig, BlipForConditionalGeneration

        config = BlipConfig(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                               image_size=32, patch_size=8, projection_dim=32),
            text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                             max_position_embeddings=16, projection_dim=32, bos_token_id=1, pad_token_id=0,
                             sep_token_id=2, eos_token_id=2),
            projection_dim=32, image_text_hidden_size=32)
        warm_pretrained(BlipForConditionalGeneration, config, pixel_values=torch.zeros(1, 3, 32, 32))

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"
        self.dtype: Any = None
        self.context_tokens = 0
        """Positions of the text decoder: prompt (its start token included) and caption together."""
        self.max_new_tokens = int(spec.options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.default_prompt: str | None = spec.options.get("prompt")

    def load(self) -> str:
        from transformers import AutoProcessor, BlipForConditionalGeneration

        device = torch_device(self.spec)
        self.dtype = torch_dtype(self.spec, device)
        kwargs = pretrained_kwargs(self.spec, self.cache_dir)
        self.processor = AutoProcessor.from_pretrained(self.spec.source, **kwargs)
        model = load_pretrained(BlipForConditionalGeneration, self.spec, device, self.dtype, kwargs)
        # generate() runs the text decoder, whose own generation config is a default one: give it the
        # config saved with the model (token limits, suppressed tokens, beams).
        model.text_decoder.generation_config = model.generation_config
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
        groups: dict[str | None, list[int]] = {}
        for i, item in enumerate(items):
            prompt = item.prompt if item.prompt is not None else self.default_prompt
            groups.setdefault(prompt or None, []).append(i)
        results: list[dict[str, Any] | PromptFillsContext] = [{}] * len(items)
        for prompt, indices in groups.items():
            for i, result in zip(indices, self._generate(prompt, [items[i] for i in indices])):
                results[i] = result
        return results

    def _generate(self, prompt: str | None, items: list[CaptionItem]) -> list[dict[str, Any] | PromptFillsContext]:
        import torch

        images = [_rgb(item.image) for item in items]
        if prompt is None:
            inputs = self.processor(images=images, return_tensors="pt")
            prompt_len = 1  # the model starts from its [DEC] token alone
        else:
            inputs = self.processor(images=images, text=[prompt] * len(images), return_tensors="pt")
            prompt_len = inputs["input_ids"].shape[1] - 1  # the model drops the trailing [SEP]
        room = self.context_tokens - prompt_len
        if room < 1:
            return [PromptFillsContext(prompt_tokens=prompt_len, context_tokens=self.context_tokens)] * len(items)
        limits = [min(item.max_new_tokens or self.max_new_tokens, room) for item in items]
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max(limits), do_sample=False)
        new_tokens = out[:, prompt_len:].tolist()
        eos_id = self.model.config.text_config.sep_token_id
        return [_caption(self.processor, ids[:limit], eos_id) for ids, limit in zip(new_tokens, limits)]

    def close(self) -> None:
        on_gpu = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _caption(processor: Any, new_ids: list[int], eos_id: int) -> dict[str, Any]:
    """Decode one row of new tokens: up to and including the first end of sequence; padding after it
    (present when other rows of the batch ran longer) is not counted."""
    if eos_id in new_ids:
        new_ids = new_ids[: new_ids.index(eos_id) + 1]
    text = processor.decode(new_ids, skip_special_tokens=True).strip()
    return {"caption": text, "tokens": len(new_ids)}
