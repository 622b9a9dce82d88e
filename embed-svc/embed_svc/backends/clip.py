"""CLIP (``CLIPModel``: openai/clip-vit-base-patch32, openai/clip-vit-large-patch14, LAION's CLIP in the
transformers format).

Texts are padded to the batch's longest and cut to the text tower's context (77 tokens), as CLIP's own
tokenizer does; the text vector is the projected end-of-text token, the image vector the projected class
token, both L2-normalised: a text and an image compare by their dot product.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelhost.backend import torch_device
from modelhost.catalog import ModelSpec
from modelhost.pretrained import TRANSFORMERS_PRELOAD, pretrained_kwargs, torch_dtype

from ._tower import TowerEmbedder, normalised


class ClipEmbedder(TowerEmbedder):
    preload = (
        *TRANSFORMERS_PRELOAD,
        "transformers.models.clip.modeling_clip",
        "transformers.models.clip.processing_clip",
        "transformers.models.clip.image_processing_clip",
        "transformers.models.clip.tokenization_clip",
    )

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.processor: Any = None
        self.context_tokens = 0

    def load(self) -> str:
        from transformers import AutoProcessor, CLIPModel

        device = torch_device(self.spec)
        self.dtype = torch_dtype(self.spec, device)
        kwargs = pretrained_kwargs(self.spec, self.cache_dir)
        self.processor = AutoProcessor.from_pretrained(self.spec.source, **kwargs)
        model = CLIPModel.from_pretrained(self.spec.source, dtype=self.dtype, **kwargs)
        self.context_tokens = int(model.config.text_config.max_position_embeddings)
        self.model = model.to(device).eval()
        self.device = str(next(self.model.parameters()).device)
        return self.device

    def embed_texts(self, texts: list[str]) -> tuple[list[np.ndarray], list[int]]:
        import torch

        batch = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.context_tokens,
                                         return_tensors="pt")
        tokens = batch["attention_mask"].sum(dim=1).tolist()
        with torch.inference_mode():
            out = self.model.get_text_features(**batch.to(self.device))
        return normalised(out.pooler_output), tokens

    def embed_images(self, images: list[Any]) -> list[np.ndarray]:
        import torch

        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        return normalised(out.pooler_output)

    def close(self) -> None:
        self.processor = None
        super().close()
