"""What every embed backend shares: a batch of texts and images split by modality and put back in order, L2
normalisation, the warm-up check (weights and dtype come from ``modelhost.pretrained``). Each backend's module
keeps its own pre-processing (tokenizer padding, image processor) and its forward pass."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec
from modelhost.families.embed import modalities

from ..items import Embedded, ImageItem, TextItem


def normalised(features: Any) -> list[np.ndarray]:
    """A torch tensor of row vectors as float32 numpy rows of length 1 (a zero row stays zero)."""
    import torch

    rows = features.detach().to(torch.float32)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return list(rows.cpu().numpy())


class TowerEmbedder(Backend):
    """A model with a text tower, an image tower, or both, into one space. A subclass loads the model and
    writes ``embed_texts`` (vectors and the tokens each text used) and ``embed_images``."""

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        self.modalities = modalities(spec.options)
        self.model: Any = None
        self.device = "cpu"
        self.dtype: Any = None

    def embed_texts(self, texts: list[str]) -> tuple[list[np.ndarray], list[int]]:
        raise NotImplementedError

    def embed_images(self, images: list[Any]) -> list[np.ndarray]:
        raise NotImplementedError

    def infer(self, items: list[TextItem | ImageItem]) -> list[Embedded]:
        results: list[Embedded | None] = [None] * len(items)
        texts = [i for i, item in enumerate(items) if isinstance(item, TextItem)]
        images = [i for i, item in enumerate(items) if isinstance(item, ImageItem)]
        if texts:
            vectors, tokens = self.embed_texts([items[i].text for i in texts])  # type: ignore[union-attr]
            for i, v, n in zip(texts, vectors, tokens):
                results[i] = Embedded(vector=v, tokens=n)
        if images:
            for i, v in zip(images, self.embed_images([items[i].image for i in images])):  # type: ignore[union-attr]
                results[i] = Embedded(vector=v)
        if any(r is None for r in results):
            raise TypeError(f"items of an unknown kind: {sorted({type(it).__name__ for it in items})}")
        return results  # type: ignore[return-value]

    def warmup(self) -> None:
        """One text and one image (of the modalities the model takes): unit vectors of one length."""
        from PIL import Image

        items: list[TextItem | ImageItem] = []
        if "text" in self.modalities:
            items.append(TextItem(text="a photo of a train in a roundhouse"))
        if "image" in self.modalities:
            items.append(ImageItem(image=Image.linear_gradient("L").resize((64, 48)).convert("RGB")))
        results = self.infer(items)
        dims = {r.vector.shape for r in results}
        norms = [float(np.linalg.norm(r.vector)) for r in results]
        if len(dims) != 1 or not all(abs(n - 1.0) < 1e-3 for n in norms):
            raise RuntimeError(f"warm-up gave vectors of shapes {dims} and norms {norms}, not unit vectors of one length")

    def close(self) -> None:
        on_gpu = self.device.startswith("cuda")
        self.model = None
        if on_gpu:
            import torch

            torch.cuda.empty_cache()
