"""A text tower in the sentence-transformers layout, read with transformers alone: a transformer, a pooling
and dense layers, as ``modules.json`` lists them. The one in the catalog is
sentence-transformers/clip-ViT-B-32-multilingual-v1 (multilingual DistilBERT, mean pooling, a 768 → 512
dense layer), trained to put 50+ languages' texts where openai/clip-vit-base-patch32 puts its English
ones: it embeds text only, and searches an index of that CLIP's image vectors (the catalog gives both the
same ``space``).

Modules read: ``sentence_transformers.models.Transformer``, ``Pooling`` (mean, CLS or max), ``Dense``
(identity or tanh activation), ``Normalize`` (vectors are normalised anyway). Any other module is a load
error that names it. Texts are cut to the transformer's ``max_seq_length`` (sentence_bert_config.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.backend import torch_device
from modelhost.catalog import ModelSpec
from modelhost.pretrained import TRANSFORMERS_PRELOAD, torch_dtype
from modelhost.pulls import SENTENCE_TRANSFORMER_IGNORED

from ._tower import TowerEmbedder, normalised

ST = "sentence_transformers.models."
IGNORED = SENTENCE_TRANSFORMER_IGNORED  # the same files a pull fetches (``POST /v1/models/{name}/pull``)
ACTIVATIONS = ("torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh")


class SentenceTextEmbedder(TowerEmbedder):
    preload = (*TRANSFORMERS_PRELOAD, "safetensors.torch", "huggingface_hub")

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        if self.modalities != {"text"}:
            raise ValueError(f"model {spec.id!r}: the sentence_transformer backend embeds text only; "
                             "give it the option modalities: [text]")
        self.tokenizer: Any = None
        self.pooling = "mean"
        self.dense: list[tuple[Any, bool]] = []  # (linear layer, tanh after it)
        self.max_tokens = 128

    def load(self) -> str:
        import torch
        from transformers import AutoModel, AutoTokenizer

        device = torch_device(self.spec)
        self.dtype = torch_dtype(self.spec, device)
        root = self._local_dir()
        modules = json.loads((root / "modules.json").read_text())
        for m in modules:
            kind, path = m["type"].removeprefix(ST), root / m.get("path", "")
            if kind == "Transformer":
                self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
                model = AutoModel.from_pretrained(path, dtype=self.dtype, local_files_only=True)
                config = _json(path / "sentence_bert_config.json")
                self.max_tokens = int(config.get("max_seq_length") or min(self.tokenizer.model_max_length, 512))
                self.model = model.to(device).eval()
            elif kind == "Pooling":
                config = _json(path / "config.json")
                modes = [mode for mode in ("mean", "cls", "max") if config.get(f"pooling_mode_{mode}_tokens")]
                if len(modes) != 1:
                    raise ValueError(f"{path}: one pooling mode of mean, cls, max is supported, not {config}")
                self.pooling = modes[0]
            elif kind == "Dense":
                self.dense.append(_dense(path, self.dtype, device))
            elif kind != "Normalize":
                raise ValueError(f"{root}: module {m['type']} is not one this backend reads (Transformer, Pooling, "
                                 "Dense, Normalize)")
        if self.model is None:
            raise ValueError(f"{root}/modules.json names no Transformer module")
        self.device = str(next(self.model.parameters()).device)
        torch.set_grad_enabled(False)
        return self.device

    def _local_dir(self) -> Path:
        if os.path.isdir(self.spec.source):
            return Path(self.spec.source)
        from huggingface_hub import snapshot_download

        # The repository's other exports (ONNX, OpenVINO, TensorFlow, Flax: several times the weights) stay behind.
        return Path(snapshot_download(self.spec.source, cache_dir=self.cache_dir, ignore_patterns=IGNORED))

    def embed_texts(self, texts: list[str]) -> tuple[list[np.ndarray], list[int]]:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        mask = batch["attention_mask"]
        tokens = mask.sum(dim=1).tolist()
        with torch.inference_mode():
            hidden = self.model(**batch.to(self.device)).last_hidden_state
            mask = mask.to(self.device).unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "mean":
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
            elif self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
            for linear, tanh in self.dense:
                pooled = linear(pooled)
                if tanh:
                    pooled = torch.tanh(pooled)
        return normalised(pooled), tokens

    def close(self) -> None:
        self.tokenizer = None
        self.dense = []
        super().close()


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _dense(path: Path, dtype: Any, device: str) -> tuple[Any, bool]:
    """A sentence-transformers ``Dense`` folder as a torch Linear (its weights in model.safetensors or
    pytorch_model.bin, keys ``linear.weight`` and ``linear.bias``) and whether a tanh follows it."""
    import torch

    config = _json(path / "config.json")
    activation = config.get("activation_function", ACTIVATIONS[0])
    if activation not in ACTIVATIONS:
        raise ValueError(f"{path}: activation {activation} is not one this backend applies ({', '.join(ACTIVATIONS)})")
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    linear = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]), bias=bool(config.get("bias", True)))
    linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    return linear.to(device=device, dtype=dtype).eval(), activation.endswith("Tanh")
