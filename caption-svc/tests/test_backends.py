"""The caption backends on tiny random-weight models built locally (tools/make_tiny_models.py), on CPU.

Everything here is real: the transformers model classes, processors, tokenizers and generate(). The
weights are random, so captions are gibberish; what is checked is the contract the worker relies on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caption_svc.backends import BACKENDS
from caption_svc.items import CaptionItem, PromptFillsContext
from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog, ModelSpec, load_catalog

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
TINY_MODELS = ["tiny-blip", "tiny-blip2", "tiny-qwen25vl"]


@pytest.fixture(scope="session")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return load_catalog(out / "catalog.yaml")


def _backend(spec: ModelSpec) -> Backend:
    return import_backend(BACKENDS[spec.backend])(spec, cache_dir="/nonexistent-cache")


@pytest.fixture(scope="module", params=TINY_MODELS)
def loaded(request: pytest.FixtureRequest, tiny_catalog: Catalog):
    """One loaded and warmed-up backend per tiny model, shared by the tests of this module."""
    backend = _backend(tiny_catalog.get(request.param))
    device = backend.load()
    backend.warmup()
    yield backend, device
    backend.close()


def _noise(height: int, width: int, seed: int) -> Image.Image:
    pixels = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def items() -> list[CaptionItem]:
    return [
        CaptionItem(image=_noise(64, 80, seed=1)),
        CaptionItem(image=_noise(120, 50, seed=2), prompt="a picture of"),
        CaptionItem(image=Image.linear_gradient("L").resize((33, 47)).convert("RGB")),
    ]


def test_load_reports_cpu_and_warmup_passes(loaded) -> None:
    _, device = loaded
    assert device == "cpu"


def test_batch_returns_one_nonempty_caption_per_item(loaded, items) -> None:
    backend, _ = loaded
    results = backend.infer(items)
    assert len(results) == len(items)
    for result in results:
        assert set(result) == {"caption", "tokens"}
        assert isinstance(result["caption"], str) and result["caption"].strip()
        # the tiny catalog caps generation at 8 new tokens
        assert isinstance(result["tokens"], int) and 1 <= result["tokens"] <= 8


def test_batch_results_equal_single_item_results(loaded, items) -> None:
    # Greedy decoding: a batch (padded on the left for BLIP-2 and Qwen, one generate per prompt for BLIP)
    # must give each item exactly what it gets alone.
    backend, _ = loaded
    batch = backend.infer(items)
    singles = [backend.infer([item])[0] for item in items]
    assert batch == singles


def test_item_max_new_tokens_caps_only_that_item(loaded, items) -> None:
    backend, _ = loaded
    capped = CaptionItem(image=items[0].image, max_new_tokens=3)
    full, short = backend.infer([items[0], capped])
    assert short["tokens"] <= 3
    assert full["tokens"] > 3
    assert full["caption"].startswith(short["caption"])  # greedy: the short caption is a prefix


def _positions_before_the_caption(backend: Backend) -> int:
    """What the text decoder holds before the first new token when there is no prompt: BLIP's [DEC] token;
    BLIP-2's query tokens and BOS; for Qwen2.5-VL (rotary, no table) nothing is checked."""
    if backend.spec.backend == "blip":
        return 1
    if backend.spec.backend == "blip2":
        return backend.model.config.num_query_tokens + 1
    return 0


@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_max_new_tokens_at_the_public_limit_stays_inside_the_context(loaded, prompt: str | None) -> None:
    # The API takes max_new_tokens up to 512; the tiny BLIP's decoder has 64 positions, BLIP-2's 128 (and
    # the released BLIP's 512): asking for 512 once ran off the position table (IndexError, a 500).
    backend, _ = loaded
    [result] = backend.infer([CaptionItem(image=_noise(64, 80, seed=1), prompt=prompt, max_new_tokens=512)])
    assert isinstance(result, dict) and result["caption"].strip()
    assert 1 <= result["tokens"] <= 512
    context = getattr(backend, "context_tokens", None)
    if context is not None:
        assert result["tokens"] <= context - _positions_before_the_caption(backend) - (prompt is not None)


def test_prompt_that_fills_the_context_is_reported_and_spares_its_batch_mates(loaded, items) -> None:
    backend, _ = loaded
    long = CaptionItem(image=items[0].image, prompt="a " * 999, max_new_tokens=512)  # 1998 of the 2000 characters
    first, too_long, last = backend.infer([items[0], long, items[1]])
    assert [first, last] == backend.infer([items[0], items[1]])
    if backend.spec.backend == "qwen_vl":  # rotary positions: no table, so even this prompt leaves room to caption
        assert isinstance(too_long, dict) and 1 <= too_long["tokens"] <= 512
        return
    assert too_long == PromptFillsContext(prompt_tokens=too_long.prompt_tokens, context_tokens=backend.context_tokens)
    assert too_long.prompt_tokens >= backend.context_tokens


def test_batch_near_the_end_of_the_context_equals_single_items(loaded) -> None:
    # Prompts of different lengths asking for as much as each can hold: a BLIP-2 batch padded into one
    # generate would carry the longest prompt past the end, so it runs per prompt length.
    backend, _ = loaded
    batch_items = [
        CaptionItem(image=_noise(64, 80, seed=1), max_new_tokens=512),
        CaptionItem(image=_noise(50, 50, seed=4), prompt="a " * 40, max_new_tokens=512),
        CaptionItem(image=_noise(120, 50, seed=2), prompt="a picture of", max_new_tokens=5),
    ]
    batch = backend.infer(batch_items)
    assert batch == [backend.infer([item])[0] for item in batch_items]
    assert all(isinstance(r, dict) and r["tokens"] >= 1 for r in batch)
    assert batch[2]["tokens"] <= 5


@pytest.mark.parametrize("model_id", TINY_MODELS)
def test_model_asked_for_cuda_reports_the_device_it_really_got(tiny_catalog: Catalog, model_id: str) -> None:
    # On a CPU-only machine the honest answer is "cpu"; the runtime then refuses the model unless the
    # catalog allows the fallback. Where a GPU is usable the model must really be on it.
    import torch

    spec = tiny_catalog.get(model_id).model_copy(update={"device": "cuda"})
    backend = _backend(spec)
    device = backend.load()
    try:
        if torch.cuda.is_available():
            assert device == "cuda:0"
        else:
            assert device == "cpu"
        backend.warmup()
    finally:
        backend.close()
    assert backend.model is None


def test_half_precision_asked_on_cpu_runs_float32(tiny_catalog: Catalog) -> None:
    import torch

    spec = tiny_catalog.get("tiny-blip").model_copy(update={"dtype": "float16"})
    backend = _backend(spec)
    assert backend.load() == "cpu"
    assert next(backend.model.parameters()).dtype == torch.float32
    backend.close()


def test_unsupported_dtype_fails_load_with_a_clear_message(tiny_catalog: Catalog) -> None:
    spec = tiny_catalog.get("tiny-blip").model_copy(update={"dtype": "int8"})
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        _backend(spec).load()


def test_hub_source_downloads_into_the_cache_dir(caplog: pytest.LogCaptureFixture) -> None:
    from modelhost.pretrained import pretrained_kwargs

    spec = ModelSpec(id="blip-base", family="caption", backend="blip", source="Salesforce/blip-image-captioning-base")
    with caplog.at_level(logging.INFO):
        kwargs = pretrained_kwargs(spec, "/models/cache")
    assert kwargs == {"cache_dir": "/models/cache"}
    assert "downloading Salesforce/blip-image-captioning-base into /models/cache" in caplog.text


def test_backend_table_imports_nothing_heavy() -> None:
    # The HTTP process imports the table (and the item type) to validate the catalog; it must never load
    # torch or transformers, which belong to the worker process.
    code = (
        "import sys, caption_svc.backends, caption_svc.items; "
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules); "
        "print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"imported: {done.stdout.strip()} {done.stderr[-500:]}"


def test_qwen_max_pixels_option_bounds_the_vision_tokens(tiny_catalog: Catalog) -> None:
    spec = tiny_catalog.get("tiny-qwen25vl")
    spec = spec.model_copy(update={"options": {**spec.options, "max_pixels": 28 * 28 * 4}})
    backend = _backend(spec)
    backend.load()
    try:
        photo = _noise(480, 640, seed=3)
        [result] = backend.infer([CaptionItem(image=photo)])
        assert result["caption"]
        image_kwargs = backend.image_kwargs
        grid = backend.processor(images=[photo], text=["<|image_pad|>"], return_tensors="pt", **image_kwargs)
        assert int(grid["image_grid_thw"].prod()) // 4 <= 4  # 4 merged tokens of 28x28 pixels
    finally:
        backend.close()
