"""SigLIP and SigLIP 2 (``AutoModel``: ``SiglipModel`` for google/siglip-base-patch16-224 and the fixed-resolution
SigLIP 2 checkpoints such as google/siglip2-base-patch16-224, ``Siglip2Model`` for the NaFlex ones).

Texts are padded to the text tower's full context (64 tokens) and cut to it: SigLIP was trained that way
(``padding="max_length"``, as its model card says) and its vector is the last position's, so a text padded
only to its batch's longest would embed differently by batch. SigLIP 2 was trained on lower-cased text: the
catalog's option ``lowercase: true`` lowers each text first. Vectors are L2-normalised; the sigmoid's scale
and bias are not applied (search ranks by the dot product).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelhost.backend import torch_device
from modelhost.catalog import ModelSpec
from modelhost.pretrained import TRANSFORMERS_PRELOAD, pretrained_kwargs, torch_dtype

from ._tower import TowerEmbedder, normalised


class SiglipEmbedder(TowerEmbedder):
    preload = (
        *TRANSFORMERS_PRELOAD,
        "transformers.models.siglip.modeling_siglip",
        "transformers.models.siglip.processing_siglip",
        "transformers.models.siglip.image_processing_siglip",
        "transformers.models.siglip2.modeling_siglip2",
    )

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.processor: Any = None
        self.context_tokens = 0
        self.lowercase = bool(spec.options.get("lowercase", False))

    def load(self) -> str:
        from transformers import AutoModel, AutoProcessor

        device = torch_device(self.spec)
        self.dtype = torch_dtype(self.spec, device)
        kwargs = pretrained_kwargs(self.spec, self.cache_dir)
        self.processor = AutoProcessor.from_pretrained(self.spec.source, **kwargs)
        model = AutoModel.from_pretrained(self.spec.source, dtype=self.dtype, **kwargs)
        if type(model).__name__ not in ("SiglipModel", "Siglip2Model"):
            raise ValueError(f"{self.spec.source} is a {type(model).__name__}, not a SigLIP or SigLIP 2 model")
        self.context_tokens = int(self.spec.options.get("max_text_tokens",
                                                        model.config.text_config.max_position_embeddings))
        self.model = model.to(device).eval()
        self.device = str(next(self.model.parameters()).device)
        return self.device

    def embed_texts(self, texts: list[str]) -> tuple[list[np.ndarray], list[int]]:
        import torch

        tokenizer = self.processor.tokenizer
        batch = tokenizer([t.lower() for t in texts] if self.lowercase else texts, padding="max_length",
                          truncation=True, max_length=self.context_tokens, return_attention_mask=True,
                          return_tensors="pt")
        tokens = batch["attention_mask"].sum(dim=1).tolist()
        inputs = {"input_ids": batch["input_ids"].to(self.device)}
        if "attention_mask" in tokenizer.model_input_names:  # SigLIP 2's Gemma tokenizer; SigLIP's has none
            inputs["attention_mask"] = batch["attention_mask"].to(self.device)
        with torch.inference_mode():
            out = self.model.get_text_features(**inputs)
        return normalised(out.pooler_output), tokens

    def embed_images(self, images: list[Any]) -> list[np.ndarray]:
        import torch

        inputs = self.processor.image_processor(images=images, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.get_image_features(**inputs)
        return normalised(out.pooler_output)

    def close(self) -> None:
        self.processor = None
        super().close()
