"""Build tiny random-weight embedding models, fully locally, and merge their catalog entries.

    .venvs/embed-svc/bin/python tools/make_tiny_embed_models.py [OUT_DIR]      (default: build/tiny-models)

Writes into OUT_DIR/embed/:

- ``tiny-clip/``: a ``CLIPModel`` (2 layers of width 32 per tower, 32-pixel images, 16-token context, 16-dim
  space) with a ``CLIPProcessor``: a byte-level BPE ``CLIPTokenizer`` built in code from a few words;
- ``tiny-siglip/``: a ``SiglipModel`` with a ``SiglipProcessor`` whose tokenizer is a ``GemmaTokenizer`` built in
  code, the way the fixed-resolution SigLIP 2 checkpoints (google/siglip2-base-patch16-224) are laid out;
- ``tiny-siglip2/``: a ``Siglip2Model`` (NaFlex: each image cut into at most 16 patches of 8 pixels at its own
  aspect ratio) with a ``Siglip2Processor``, the layout of google/siglip2-base-patch16-naflex;
- ``tiny-clip-multilingual/``: a sentence-transformers text tower (``modules.json``: a DistilBERT, mean pooling,
  a 32 → 16 dense layer without bias), the layout of sentence-transformers/clip-ViT-B-32-multilingual-v1, into
  tiny-clip's 16 dimensions (its ``space``);

then puts the embed entries into OUT_DIR/catalog.yaml, between marker comments, leaving every other line as it
was (the other families' builders do the same with their own blocks; tools/make_tiny_models.py writes the file
from scratch, so `make tiny-models` runs it first and this after it).

Deterministic (fixed seeds), nothing downloaded (HF_HUB_OFFLINE), idempotent: the models are rebuilt only when
this file or tools/tiny_common.py changed since they were built (``embed/build-info.json`` holds their hash),
and catalog.yaml is rewritten only when its embed entries differ.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_common beside this file, when a test loads it
import tiny_common  # noqa: E402

FAMILY = "embed"
DIM = 16
WORDS = (
    "a an the photo picture image of on in with and is are at by near two three "
    "cat cats dog dogs man woman person people child face beach car tree sky train station "
    "red blue green white black sitting standing walking table street room water grass"
).split()
MULTILINGUAL_WORDS = "un une le la chat chien photo eine ein der die katze hund foto gato perro кошка собака 猫 犬".split()

ENTRIES: list[dict[str, Any]] = [
    {"id": "tiny-clip", "family": FAMILY, "backend": "clip", "source": "./embed/tiny-clip", "device": "cpu",
     "dtype": "float32", "memory_estimate_mb": 64, "max_batch": 8, "max_wait_ms": 2},
    {"id": "tiny-siglip", "family": FAMILY, "backend": "siglip", "source": "./embed/tiny-siglip", "device": "cpu",
     "dtype": "float32", "memory_estimate_mb": 64, "max_batch": 8, "max_wait_ms": 2, "options": {"lowercase": True}},
    {"id": "tiny-siglip2", "family": FAMILY, "backend": "siglip", "source": "./embed/tiny-siglip2", "device": "cpu",
     "dtype": "float32", "memory_estimate_mb": 64, "max_batch": 8, "max_wait_ms": 2, "options": {"lowercase": True}},
    {"id": "tiny-clip-multilingual", "family": FAMILY, "backend": "sentence_transformer",
     "source": "./embed/tiny-clip-multilingual", "device": "cpu", "dtype": "float32", "memory_estimate_mb": 64,
     "max_batch": 8, "max_wait_ms": 2, "options": {"modalities": ["text"], "space": "tiny-clip"}},
]

BEGIN = "  # >>> embed models: written by tools/make_tiny_embed_models.py (a rerun replaces this block)\n"
END = "  # <<< embed models\n"


def build_clip(out: Path) -> None:
    """CLIP's BPE marks a word's end with ``</w>``: every byte symbol, alone and word-final, then the words
    with the merges that build them left to right."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(0)
    specials = ["<|startoftext|>", "<|endoftext|>"]
    alphabet = list(tiny_common.bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((symbols[0], symbols[1]))
            symbols = [merged, *symbols[2:]]
    for tok in specials:
        vocab[tok] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=DIM)
    CLIPModel(config).eval().save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def build_siglip(out: Path) -> None:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    torch.manual_seed(1)
    tokenizer = _gemma_tokenizer()
    config = SiglipConfig(
        text_config=_siglip_text_config(tokenizer),
        vision_config=dict(hidden_size=DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8))
    SiglipModel(config).eval().save_pretrained(out)
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def _gemma_tokenizer() -> Any:
    """A Gemma tokenizer (SigLIP 2's) of the byte symbols and a few words, built in code."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    alphabet = list(tiny_common.bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, "▁", *alphabet, *("▁" + w for w in WORDS)]))}
    merges: list[tuple[str, str]] = []
    for word in ("▁" + w for w in WORDS):
        for i in range(2, len(word) + 1):
            vocab.setdefault(word[:i], len(vocab))
            merges.append((word[: i - 1], word[i - 1]))
    return GemmaTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=16)


def _siglip_text_config(tokenizer: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tokenizer), hidden_size=DIM, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, projection_size=DIM)


def build_siglip2(out: Path) -> None:
    import torch
    from transformers import Siglip2Config, Siglip2Model, Siglip2Processor
    from transformers.models.siglip2 import Siglip2ImageProcessorPil

    torch.manual_seed(3)
    tokenizer = _gemma_tokenizer()
    config = Siglip2Config(
        text_config=_siglip_text_config(tokenizer),
        vision_config=dict(hidden_size=DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           patch_size=8, num_patches=16))
    Siglip2Model(config).eval().save_pretrained(out)
    image_processor = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
    Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)


def build_multilingual(out: Path) -> None:
    """The sentence-transformers layout, written by hand: the transformer at the root, 1_Pooling, 2_Dense."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizer, DistilBertConfig, DistilBertModel

    torch.manual_seed(2)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = specials + WORDS + MULTILINGUAL_WORDS + list(letters) + ["##" + c for c in letters]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=32)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, hidden_dim=64, n_layers=2, n_heads=4,
                              max_position_embeddings=32, pad_token_id=vocab["[PAD]"])
    DistilBertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False}))
    (out / "2_Dense").mkdir()
    (out / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": DIM, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    save_file({"linear.weight": torch.randn(DIM, 32) / 32 ** 0.5}, str(out / "2_Dense" / "model.safetensors"))
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))


MODELS = {"tiny-clip": build_clip, "tiny-siglip": build_siglip, "tiny-siglip2": build_siglip2,
          "tiny-clip-multilingual": build_multilingual}


def merge_catalog(catalog: Path, entries: list[dict[str, Any]]) -> bool:
    """The embed entries into ``catalog``, in their marked block (``tiny_common.merge_catalog``)."""
    return tiny_common.merge_catalog(catalog, entries, family=FAMILY, begin=BEGIN, end=END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="build/tiny-models", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild the models even if they are up to date")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    embed = args.out_dir / "embed"
    embed.mkdir(parents=True, exist_ok=True)
    info_path = embed / "build-info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    fresh = info.get("builder") == tiny_common.builder_hash(__file__) and all((embed / n).is_dir() for n in MODELS)
    if fresh and not args.force:
        print(f"tiny embed models in {embed} are up to date", flush=True)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a guard: nothing here may reach a hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        info_path.unlink(missing_ok=True)
        for name, build in MODELS.items():
            t = time.monotonic()
            staging = embed / f".{name}.partial"  # a failed build never leaves a half-written model behind
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            build(staging)
            shutil.rmtree(embed / name, ignore_errors=True)
            staging.rename(embed / name)
            print(f"built {embed / name} in {time.monotonic() - t:.1f}s", flush=True)
        info_path.write_text(json.dumps({"builder": tiny_common.builder_hash(__file__)}) + "\n")
    catalog = args.out_dir / "catalog.yaml"
    changed = merge_catalog(catalog, ENTRIES)
    print(f"{'merged' if changed else 'kept'} {len(ENTRIES)} embed entries in {catalog} "
          f"({time.monotonic() - t0:.1f}s total)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
