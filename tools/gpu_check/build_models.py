"""Build caption models in their real architectures and sizes with random weights, on the spot.

    python tools/gpu_check/build_models.py OUT_DIR [--scale real|mini] [--device cuda|cpu] [--qwen 3b|7b]

Writes OUT_DIR/<name>/ (a transformers model and its processor, ``save_pretrained``) and
OUT_DIR/models.json (what was built: backend, dtype, parameters, bytes on disk, seconds). Nothing is
downloaded: the tokenizers and processors are the tiny ones of ``tools/make_tiny_models.py`` (built
in code); only the networks are scaled up to the published configurations:

    blip-large   BlipForConditionalGeneration as Salesforce/blip-image-captioning-large
                 (ViT-L/16 at 384 px + BERT-base decoder; ~470 M parameters, ~0.9 GB in float16)
    blip2        Blip2ForConditionalGeneration as Salesforce/blip2-opt-2.7b
                 (EVA ViT-g/14 + Q-Former + OPT-2.7b; ~3.8 G parameters, ~7.5 GB in float16)
    qwen25vl     Qwen2_5_VLForConditionalGeneration as Qwen/Qwen2.5-VL-3B-Instruct (``--qwen 7b``:
                 the 7B; ~3.8 / 8.3 G parameters, ~7.5 / 16.6 GB in bfloat16)
    anchor       the tiny BLIP: pinned beside them so the caption worker (and its CUDA context) stays up

The vocabularies keep their real sizes (the logits cost real memory); ids past the tiny tokenizer are
suppressed in generation, so captions decode to (random) words. ``--scale mini`` builds the same four
with tiny dimensions through the same code: the CPU rehearsal's models. The weights are initialised on
``--device`` (fast on a GPU), in the dtype the catalog will run them in. Runs with the caption-svc
environment (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/: make_tiny_models
import make_tiny_models as tiny  # noqa: E402

# name -> (tiny builder, model class, config overrides at real size, image pixels, dtype on a GPU)
REAL: dict[str, dict[str, Any]] = {
    "blip-large": {
        "backend": "blip", "build": tiny.build_blip, "cls": "BlipForConditionalGeneration", "dtype": "float16",
        "image": {"height": 384, "width": 384},
        "vision_config": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=384, patch_size=16),
        "text_config": dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=512, encoder_hidden_size=1024),
        "top": dict(projection_dim=512, image_text_hidden_size=256),
    },
    "blip2": {
        "backend": "blip2", "build": tiny.build_blip2, "cls": "Blip2ForConditionalGeneration", "dtype": "float16",
        "image": {"height": 224, "width": 224},
        "vision_config": dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                              image_size=224, patch_size=14),
        "qformer_config": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                               intermediate_size=3072, encoder_hidden_size=1408),
        "text_config": dict(vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240,
                            num_attention_heads=32, word_embed_proj_dim=2560, max_position_embeddings=2048),
        "top": dict(num_query_tokens=32), "processor": dict(num_query_tokens=32),
    },
    "qwen25vl": {
        "backend": "qwen_vl", "build": tiny.build_qwen25vl, "cls": "Qwen2_5_VLForConditionalGeneration",
        "dtype": "bfloat16", "pixels": {"shortest_edge": 28 * 28 * 16, "longest_edge": 28 * 28 * 256},
        "text_config": dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                            num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                            tie_word_embeddings=True,
                            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        "vision_config": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                              fullatt_block_indexes=[7, 15, 23, 31]),
    },
}
QWEN_7B = {
    "text_config": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                        tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
    "vision_config": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31]),
}
SUB_CONFIGS = ("vision_config", "qformer_config", "text_config")

# --scale mini: the same recipes with every width and depth cut down (vocabularies, image sizes and
# the code path kept), so the CPU rehearsal builds through the same lines in seconds.
MINI = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "depth": 2, "num_attention_heads": 4,
        "num_heads": 4, "num_key_value_heads": 2, "ffn_dim": 64, "word_embed_proj_dim": 32, "encoder_hidden_size": 32,
        "out_hidden_size": 32, "fullatt_block_indexes": [1], "projection_dim": 32, "image_text_hidden_size": 32}


def _mini(recipe: dict[str, Any]) -> dict[str, Any]:
    small = dict(recipe)
    for sub in (*SUB_CONFIGS, "top"):
        if sub in recipe:
            small[sub] = {k: MINI.get(k, v) for k, v in recipe[sub].items()}
    if "rope_parameters" in small.get("text_config", {}):  # head_dim 32/4 = 8: sections sum to 4
        small["text_config"]["rope_parameters"] = {**small["text_config"]["rope_parameters"], "mrope_section": [2, 1, 1]}
    return small


def _configure(config: Any, recipe: dict[str, Any]) -> None:
    for sub in SUB_CONFIGS:
        for key, value in recipe.get(sub, {}).items():
            setattr(getattr(config, sub), key, value)
    for key, value in recipe.get("top", {}).items():
        setattr(config, key, value)
    text = config.text_config
    if getattr(text, "layer_types", None) is not None:  # one entry per layer (validated when loaded)
        text.layer_types = ["full_attention"] * text.num_hidden_layers
    if "tie_word_embeddings" in recipe.get("text_config", {}):
        config.tie_word_embeddings = recipe["text_config"]["tie_word_embeddings"]


def _suppress_past_tokenizer(generation_config: Any, tokenizer_size: int, vocab_size: int) -> None:
    """Ids the tokenizer cannot decode are never generated (the vocabulary is real-sized, the tokenizer tiny)."""
    if vocab_size > tokenizer_size:
        generation_config.suppress_tokens = sorted(set(generation_config.suppress_tokens or [])
                                                   | set(range(tokenizer_size, vocab_size)))


def build(name: str, recipe: dict[str, Any], out: Path, *, scale: str, device: str) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    t0 = time.monotonic()
    staging = out.parent / f".{out.name}.tiny"
    shutil.rmtree(staging, ignore_errors=True)
    recipe["build"](staging)  # tokenizer, processor, generation config (and a tiny network, replaced below)
    if name == "anchor":
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        dtype = "float32"
    else:
        recipe = _mini(recipe) if scale == "mini" else recipe
        config = AutoConfig.from_pretrained(staging)
        _configure(config, recipe)
        processor = AutoProcessor.from_pretrained(staging)
        for key, value in recipe.get("processor", {}).items():
            setattr(processor, key, value)
        if "image" in recipe:
            processor.image_processor.size = recipe["image"]
        if "pixels" in recipe:
            processor.image_processor.size = recipe["pixels"]
            processor.image_processor.min_pixels = recipe["pixels"]["shortest_edge"]
            processor.image_processor.max_pixels = recipe["pixels"]["longest_edge"]
        dtype = recipe["dtype"] if device.startswith("cuda") else "float32"
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(getattr(torch, dtype))
        try:
            with torch.device(device):
                model = getattr(transformers, recipe["cls"])(config).eval()
        finally:
            torch.set_default_dtype(previous)
        generation = GenerationConfig.from_pretrained(staging)
        text_vocab = config.text_config.vocab_size
        _suppress_past_tokenizer(generation, len(processor.tokenizer), text_vocab)
        model.generation_config = generation
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        shutil.rmtree(staging, ignore_errors=True)
    weights = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    params = _parameters(out)
    return {"dir": str(out), "backend": recipe["backend"], "dtype": dtype, "parameters": params,
            "weights_bytes": weights, "build_s": round(time.monotonic() - t0, 2)}


def _parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                shape = st.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--scale", choices=["real", "mini"], default="real")
    parser.add_argument("--device", default="cuda", help="where the weights are initialised (cuda or cpu)")
    parser.add_argument("--qwen", choices=["3b", "7b"], default="3b")
    parser.add_argument("--only", nargs="*", help="build only these (default: all)")
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    recipes = dict(REAL)
    if args.qwen == "7b":
        recipes["qwen25vl"] = {**recipes["qwen25vl"], **QWEN_7B}
    recipes["anchor"] = {"backend": "blip", "build": tiny.build_blip}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    for name, recipe in recipes.items():
        if args.only and name not in args.only:
            continue
        built[name] = build(name, recipe, args.out_dir / name, scale=args.scale, device=args.device)
        b = built[name]
        print(f"built {name}: {b['parameters'] / 1e6:.0f} M parameters, {b['weights_bytes'] / 2**30:.2f} GiB "
              f"{b['dtype']} in {b['build_s']:.1f} s", flush=True)
    (args.out_dir / "models.json").write_text(json.dumps(built, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
