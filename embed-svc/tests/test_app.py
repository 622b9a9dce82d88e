"""embed-svc through HTTP: create_app with the real worker and the tiny models, on CPU.

Checks what the service promises at its edge: the contract's answer (unit vectors in input order, one dim,
tokens), requests batched together giving the vectors each gets alone, and every kind of bad input its own
4xx envelope before any inference, none of which harms the service.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from embed_svc.config import EmbedSettings
from embed_svc.main import create_app
from modelhost.families.embed import IMAGE_PATH, MAX_ITEMS, MAX_TEXT_CHARS, TEXT_PATH, EmbedResponse

pytestmark = pytest.mark.app

MODELS = ["tiny-clip", "tiny-siglip", "tiny-siglip2", "tiny-clip-multilingual"]


@pytest.fixture(scope="module")
def client(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = EmbedSettings(catalog=tiny_models / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"),
                             max_upload_bytes=200_000, max_image_pixels=1_000_000)
    with TestClient(create_app(settings)) as c:
        for model in MODELS:
            r = c.post(f"/v1/models/{model}/load")
            assert r.status_code == 200, r.text
        yield c


def png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()


def texts(client: TestClient, model: str, items: Any) -> Any:
    return client.post(TEXT_PATH, json={"model": model, "texts": items})


def images(client: TestClient, model: str, files: list[bytes]) -> Any:
    return client.post(IMAGE_PATH, data={"model": model}, files=[("file", (f"i{n}", f)) for n, f in enumerate(files)])


def assert_envelope(r: Any, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "embed-svc" and set(body) == {"src", "request_id", "error"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body


@pytest.mark.parametrize("model", MODELS)
def test_texts_answer_unit_vectors_in_input_order(client: TestClient, model: str) -> None:
    r = texts(client, model, ["a photo of a cat", "a dog", "a photo of a cat"])
    assert r.status_code == 200, r.text
    body = EmbedResponse.model_validate(r.json())
    assert (body.object, body.model, body.modality, body.dim) == ("embedding.list", model, "text", 16)
    vectors = np.array(body.embeddings)
    assert vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.9999
    assert body.tokens > 0 and body.timings.decode_ms == 0 and body.timings.inference_ms > 0


@pytest.mark.parametrize("model", ["tiny-clip", "tiny-siglip", "tiny-siglip2"])
def test_images_answer_unit_vectors_in_the_texts_space(client: TestClient, model: str) -> None:
    r = images(client, model, [png(1), png(2)])
    assert r.status_code == 200, r.text
    body = EmbedResponse.model_validate(r.json())
    assert (body.modality, body.dim, body.tokens) == ("image", 16, 0)
    vectors = np.array(body.embeddings)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    text = np.array(texts(client, model, ["a cat"]).json()["embeddings"][0])
    assert text.shape == vectors[0].shape  # one space: a text and an image compare by their dot product
    assert -1.0 <= float(text @ vectors[0]) <= 1.0


def test_concurrent_requests_batch_together_and_get_the_vectors_each_gets_alone(client: TestClient) -> None:
    words = [f"a photo of {n} cats" for n in ("two", "three", "red", "black", "white", "green")]
    alone = {w: texts(client, "tiny-clip", [w]).json()["embeddings"][0] for w in words}
    picture = images(client, "tiny-clip", [png(7)]).json()["embeddings"][0]
    with ThreadPoolExecutor(8) as pool:
        text_answers = list(pool.map(lambda w: texts(client, "tiny-clip", [w, w]), words))
        image_answers = list(pool.map(lambda _: images(client, "tiny-clip", [png(7)]), range(4)))
    for w, r in zip(words, text_answers):
        assert r.status_code == 200, r.text
        for v in r.json()["embeddings"]:
            np.testing.assert_allclose(v, alone[w], atol=1e-5)
    for r in image_answers:
        np.testing.assert_allclose(r.json()["embeddings"][0], picture, atol=1e-5)
    # one request's texts went through the batcher together: some batch held more than one item
    metrics = client.get("/metrics").text
    sizes = [line for line in metrics.splitlines()
             if line.startswith("roundhouse_model_batch_size_bucket") and 'model="tiny-clip"' in line]
    one = next(float(s.rsplit(" ", 1)[1]) for s in sizes if 'le="1.0"' in s)
    total = next(float(s.rsplit(" ", 1)[1]) for s in sizes if 'le="+Inf"' in s)
    assert total > one, sizes


def test_bad_texts_are_400_with_their_codes(client: TestClient) -> None:
    assert_envelope(texts(client, "tiny-clip", []), 400, "empty_input", "texts")
    assert_envelope(texts(client, "tiny-clip", ["a cat", "  "]), 400, "empty_input", "texts.1")
    assert_envelope(texts(client, "tiny-clip", ["a cat", "x" * (MAX_TEXT_CHARS + 1)]), 400, "text_too_long", "texts.1")
    assert_envelope(texts(client, "tiny-clip", ["a"] * (MAX_ITEMS + 1)), 400, "too_many_inputs", "texts")
    assert_envelope(texts(client, "tiny-clip", "a cat"), 422)
    assert_envelope(texts(client, "tiny-clip", [1, 2]), 422)
    assert_envelope(texts(client, "no-such-model", ["a cat"]), 404, "model_not_found")
    r = texts(client, "tiny-clip", ["x" * MAX_TEXT_CHARS])  # at the limit: cut to the context, embedded
    assert r.status_code == 200 and r.json()["tokens"] == 16, r.text


def test_bad_images_are_4xx_with_their_codes(client: TestClient) -> None:
    good = png(3)
    assert_envelope(images(client, "tiny-clip", []), 400, "empty_input", "file")
    assert_envelope(images(client, "tiny-clip-multilingual", [good]), 400, "unsupported_input", "model")
    assert_envelope(images(client, "tiny-clip", [good, good[: len(good) // 2]]), 400, "corrupt_image", "file.1")
    assert_envelope(images(client, "tiny-clip", [b"not an image at all"]), 415, param="file")
    assert_envelope(images(client, "tiny-clip", [b""]), 400, "empty_file")
    assert_envelope(images(client, "tiny-clip", [png(4, (1200, 1000))]), 413)  # over max_image_pixels
    assert_envelope(images(client, "no-such-model", [good]), 404, "model_not_found")
    assert_envelope(client.post(IMAGE_PATH, data={"model": "tiny-clip"}, files=[("file", ("a", good))] * (MAX_ITEMS + 1)),
                    400, "too_many_inputs")
    assert images(client, "tiny-clip", [good]).status_code == 200  # the service is unharmed


def test_an_unloaded_model_is_503_until_loaded(client: TestClient) -> None:
    assert client.post("/v1/models/tiny-siglip/unload").status_code == 200
    assert_envelope(texts(client, "tiny-siglip", ["a cat"]), 503, "model_not_ready")
    assert client.post("/v1/models/tiny-siglip/load").status_code == 200
    assert texts(client, "tiny-siglip", ["a cat"]).status_code == 200
