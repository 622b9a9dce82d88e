"""The embed family's contract (modelhost.families.embed): its checks, modalities and dimensions, and the two
upstream calls against a recording requester (a stand-in for the gateway's Upstream)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from modelhost.errors import BadRequest, UpstreamError
from modelhost.families import embed

pytestmark = pytest.mark.unit


def code_of(call: Any) -> tuple[str, str | None]:
    with pytest.raises(BadRequest) as e:
        call()
    return e.value.code, e.value.param


def test_text_checks_name_the_first_bad_text() -> None:
    embed.check_texts(["a"] * embed.MAX_ITEMS)
    embed.check_texts(["x" * embed.MAX_TEXT_CHARS])
    assert code_of(lambda: embed.check_texts([])) == ("empty_input", "texts")
    assert code_of(lambda: embed.check_texts(["a", "\n "])) == ("empty_input", "texts.1")
    assert code_of(lambda: embed.check_texts(["a", "b", "x" * (embed.MAX_TEXT_CHARS + 1)])) == ("text_too_long", "texts.2")
    assert code_of(lambda: embed.check_texts(["a"] * (embed.MAX_ITEMS + 1))) == ("too_many_inputs", "texts")
    assert code_of(lambda: embed.check_images(0)) == ("empty_input", "file")
    assert code_of(lambda: embed.check_images(embed.MAX_ITEMS + 1)) == ("too_many_inputs", "file")


def test_modalities_default_to_both_and_a_text_tower_refuses_images() -> None:
    assert embed.modalities({}) == {"text", "image"}
    assert embed.modalities({"modalities": ["text"]}) == {"text"}
    assert embed.modalities({"modalities": "image"}) == {"image"}
    for bad in ([], ["audio"], ["text", "video"]):
        with pytest.raises(ValueError):
            embed.modalities({"modalities": bad})
    embed.check_modality("m", {"modalities": ["text"]}, "text")
    assert code_of(lambda: embed.check_modality("m", {"modalities": ["text"]}, "image")) == ("unsupported_input", "model")


def test_a_models_space_is_its_own_id_unless_the_catalog_names_one() -> None:
    assert embed.space("clip-vit-b32", {}) == "clip-vit-b32"
    assert embed.space("clip-multilingual", {"modalities": ["text"], "space": "clip-vit-b32"}) == "clip-vit-b32"


def test_dimensions_cut_only_a_matryoshka_model() -> None:
    assert embed.dimensions("m", {}, 512, None) == 512
    assert embed.dimensions("m", {}, 512, 512) == 512
    assert embed.dimensions("m", {"matryoshka": True}, 768, 256) == 256
    for options, asked in (({}, 256), ({"matryoshka": True}, 1024), ({"matryoshka": True}, 0),
                           ({"matryoshka": True}, True)):
        assert code_of(lambda options=options, asked=asked: embed.dimensions("m", options, 768, asked)) == ("unsupported_dimensions", "dimensions")
    [v] = embed.truncated([[0.6, 0.0, 0.8]], 2)
    assert v == [1.0, 0.0]
    [w] = embed.truncated([[0.5, 0.5, 0.5, 0.5]], 3)
    assert math.isclose(sum(x * x for x in w), 1.0)


class Recorder:
    """Records the call and answers ``reply``, as the gateway's Upstream would after the HTTP exchange."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path, kwargs))
        return self.reply

    def stream(self, method: str, path: str, **kwargs: Any) -> Any:  # pragma: no cover - not used by this family
        raise NotImplementedError


REPLY = {"object": "embedding.list", "model": "m", "modality": "text", "dim": 2, "embeddings": [[1.0, 0.0]],
         "tokens": 3, "timings": {"decode_ms": 0.0, "inference_ms": 1.5}}


async def test_embed_texts_posts_json_and_reads_the_answer() -> None:
    upstream = Recorder(REPLY)
    reply = await embed.embed_texts(upstream, "m", ["a cat"], timeout_s=5, request_id="r1")
    assert reply.embeddings == [[1.0, 0.0]] and reply.tokens == 3
    [(method, path, kwargs)] = upstream.calls
    assert (method, path) == ("POST", embed.TEXT_PATH)
    assert kwargs["json_body"] == {"model": "m", "texts": ["a cat"]} and kwargs["request_id"] == "r1"


async def test_embed_images_posts_one_file_part_per_image() -> None:
    upstream = Recorder({**REPLY, "modality": "image", "tokens": 0, "embeddings": [[1.0, 0.0], [0.0, 1.0]]})
    reply = await embed.embed_images(upstream, "m", [b"one", b"two"], timeout_s=5)
    assert reply.modality == "image" and len(reply.embeddings) == 2
    [(_, path, kwargs)] = upstream.calls
    assert path == embed.IMAGE_PATH and kwargs["content_type"].startswith("multipart/form-data; boundary=")
    body: bytes = kwargs["data"]
    assert body.count(b'name="file"') == 2 and b'name="model"\r\n\r\nm\r\n' in body
    assert body.index(b"one") < body.index(b"two")


async def test_an_answer_outside_the_contract_is_502() -> None:
    with pytest.raises(UpstreamError):
        await embed.embed_texts(Recorder({**REPLY, "modality": "audio"}), "m", ["a"], timeout_s=5)
