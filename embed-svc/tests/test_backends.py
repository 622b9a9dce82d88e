"""The embed backends on tiny random-weight models built locally (tools/make_tiny_embed_models.py), on CPU.

Everything is real: the transformers model classes, processors and tokenizers, and the sentence-transformers
layout read by hand. The weights are random, so what is checked is the contract the service relies on:
unit vectors, one space per model, the same vector alone or in any batch, tokens counted and cut to the
model's context.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embed_svc.backends import BACKENDS
from embed_svc.items import Embedded, ImageItem, TextItem
from modelhost.backend import Backend, import_backend
from modelhost.catalog import load_catalog

pytestmark = pytest.mark.model

TWO_TOWERS = ["tiny-clip", "tiny-siglip", "tiny-siglip2"]
DIM = 16  # the tiny models' space (tools/make_tiny_embed_models.py)


def _backend(tiny_models: Path, model: str) -> Backend:
    spec = load_catalog(tiny_models / "catalog.yaml").get(model)
    return import_backend(BACKENDS[spec.backend])(spec, cache_dir="/nonexistent-cache")


@pytest.fixture(scope="module", params=[*TWO_TOWERS, "tiny-clip-multilingual"])
def loaded(request: pytest.FixtureRequest, tiny_models: Path):
    backend = _backend(tiny_models, request.param)
    assert backend.load() == "cpu"
    backend.warmup()
    yield request.param, backend
    backend.close()


def noise(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8"), "RGB")


TEXTS = ["a photo of a cat", "two dogs on the beach", "Eine Katze sitzt auf dem Tisch", "猫"]
IMAGES = [noise(64, 48, 1), noise(30, 90, 2), Image.linear_gradient("L").resize((50, 50)).convert("RGB")]


def _items(model: str) -> list[TextItem | ImageItem]:
    texts: list[TextItem | ImageItem] = [TextItem(text=t) for t in TEXTS]
    if model in TWO_TOWERS:  # interleaved, as the batcher may gather them
        return [texts[0], ImageItem(image=IMAGES[0]), *texts[1:], *(ImageItem(image=i) for i in IMAGES[1:])]
    return texts


def test_every_vector_is_a_unit_vector_of_the_models_dim(loaded) -> None:
    model, backend = loaded
    results = backend.infer(_items(model))
    assert all(isinstance(r, Embedded) for r in results)
    for r in results:
        assert r.vector.dtype == np.float32 and r.vector.shape == (DIM,)
        assert abs(float(np.linalg.norm(r.vector)) - 1.0) < 1e-5


def test_texts_and_images_land_in_one_space_and_differ(loaded) -> None:
    model, backend = loaded
    results = backend.infer(_items(model))
    vectors = np.stack([r.vector for r in results])
    assert len({r.vector.shape for r in results}) == 1
    # distinct inputs give distinct vectors (random weights still separate them)
    similarity = vectors @ vectors.T
    assert (similarity[~np.eye(len(vectors), dtype=bool)] < 0.9999).all()
    texts = [r for r, item in zip(results, _items(model)) if isinstance(item, TextItem)]
    images = [r for r, item in zip(results, _items(model)) if isinstance(item, ImageItem)]
    assert all(t.tokens > 0 for t in texts) and all(i.tokens == 0 for i in images)


def test_a_batch_gives_each_input_the_vector_it_gets_alone(loaded) -> None:
    model, backend = loaded
    items = _items(model)
    batched = backend.infer(items)
    for item, together in zip(items, batched):
        [alone] = backend.infer([item])
        np.testing.assert_allclose(alone.vector, together.vector, atol=1e-5)
        assert alone.tokens == together.tokens
    # and in another order
    reordered = backend.infer(items[::-1])[::-1]
    for a, b in zip(batched, reordered):
        np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)


def test_a_long_text_is_cut_to_the_models_context(loaded) -> None:
    model, backend = loaded
    short, long_ = backend.infer([TextItem(text="a cat"), TextItem(text="a cat " * 400)])
    context = 32 if model == "tiny-clip-multilingual" else 16
    assert 0 < short.tokens < context and long_.tokens == context


@pytest.mark.parametrize("model", ["tiny-siglip", "tiny-siglip2"])
def test_siglip_lowercases_texts_when_the_catalog_says_so(tiny_models: Path, model: str) -> None:
    backend = _backend(tiny_models, model)
    backend.load()
    try:
        lower, upper = backend.infer([TextItem(text="a photo of a cat"), TextItem(text="A PHOTO OF A CAT")])
        np.testing.assert_allclose(lower.vector, upper.vector, atol=1e-6)
    finally:
        backend.close()


def test_siglip2_naflex_embeds_each_image_at_its_own_aspect_ratio(tiny_models: Path) -> None:
    """NaFlex patches an image at its own shape (up to 16 patches here), so a wide and a tall picture of one
    gradient are different inputs, and each gets the vector it gets alone."""
    backend = _backend(tiny_models, "tiny-siglip2")
    backend.load()
    try:
        assert type(backend.model).__name__ == "Siglip2Model"
        gradient = Image.linear_gradient("L").convert("RGB")
        wide, tall = backend.infer([ImageItem(image=gradient.resize((96, 24))), ImageItem(image=gradient.resize((24, 96)))])
        assert float(wide.vector @ tall.vector) < 0.9999
        [alone] = backend.infer([ImageItem(image=gradient.resize((24, 96)))])
        np.testing.assert_allclose(alone.vector, tall.vector, atol=1e-5)
    finally:
        backend.close()


def test_a_text_only_tower_given_image_modalities_fails_to_build(tiny_models: Path) -> None:
    spec = load_catalog(tiny_models / "catalog.yaml").get("tiny-clip-multilingual")
    spec = spec.model_copy(update={"options": {"modalities": ["text", "image"]}})
    with pytest.raises(ValueError, match="text only"):
        import_backend(BACKENDS[spec.backend])(spec, cache_dir="/nonexistent-cache")


def test_a_pulled_sentence_transformer_repo_loads_from_the_hub_cache(tiny_models: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull of a sentence_transformer repo is a hub pull (modelhost's Pulls) into the service's cache with the
    backend's own ignore_patterns; the load then finds that snapshot with the hub offline."""
    import huggingface_hub.constants
    from embed_svc.backends.sentence_text import IGNORED
    from modelhost.pulls import on_disk, weights_of

    spec = load_catalog(tiny_models / "catalog.yaml").get("tiny-clip-multilingual")
    tiny = Path(spec.source)
    spec = spec.model_copy(update={"source": "roundhouse-test/tiny-clip-multilingual"})
    w = weights_of(spec, tmp_path)
    assert w.kind == "hub" and w.ignore_patterns == IGNORED and w.repo_id == spec.source
    # What snapshot_download leaves: blobs, refs/main, and the snapshot's links to the blobs.
    (w.path / "refs").mkdir(parents=True)
    (w.path / "refs" / "main").write_text("c0ffee")
    (w.path / "blobs").mkdir()
    for f in (p for p in tiny.rglob("*") if p.is_file()):
        blob = w.path / "blobs" / hashlib.sha1(str(f).encode()).hexdigest()
        blob.write_bytes(f.read_bytes())
        link = w.path / "snapshots" / "c0ffee" / f.relative_to(tiny)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    assert on_disk(w) == (True, sum(p.stat().st_size for p in tiny.rglob("*") if p.is_file()))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the load may not reach the hub
    backend = import_backend(BACKENDS[spec.backend])(spec, cache_dir=str(tmp_path))
    assert backend.load() == "cpu"
    backend.warmup()
    backend.close()
