"""embed-svc as a real process on loopback, called the way the gateway calls it: through the gateway's client
(``ModelHostClient``, with the internal credential) and the family contract's calls
(``modelhost.families.embed``), with the tiny models built locally. Bad input gets its 4xx envelope from
embed-svc and the service stays up; an unloaded family holds no worker."""

from __future__ import annotations

import asyncio
import math
from typing import AsyncIterator

import httpx
import pytest

from modelhost.client import ModelHostClient, new_session
from modelhost.errors import UpstreamEnvelope
from modelhost.families import embed
from tests import procs
from tests.embed_fixtures import embed_catalog, embed_svc, photo  # noqa: F401 - fixtures

pytestmark = pytest.mark.proc

MODELS = ["tiny-clip", "tiny-siglip", "tiny-siglip2", "tiny-clip-multilingual"]


@pytest.fixture
async def client(embed_svc: procs.Proc) -> AsyncIterator[ModelHostClient]:  # noqa: F811
    session = new_session()
    c = ModelHostClient("embed", embed_svc.url, session, internal_token=procs.INTERNAL_TOKEN)
    try:
        for model in MODELS:
            await c.load(model, timeout_s=120)
        yield c
    finally:
        c.close()
        await session.close()


def unit(v: list[float]) -> bool:
    return math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-4)


async def test_texts_and_images_come_back_as_unit_vectors_of_one_space(client: ModelHostClient) -> None:
    for model in ("tiny-clip", "tiny-siglip", "tiny-siglip2"):
        t = await embed.embed_texts(client, model, ["a photo of a cat", "ein Hund am Strand"], timeout_s=60,
                                    request_id="embed-proc-1")
        i = await embed.embed_images(client, model, [photo(1), photo(2, "JPEG"), photo(3, "WEBP")], timeout_s=60)
        assert (t.modality, i.modality) == ("text", "image")
        assert t.dim == i.dim == 16 and len(t.embeddings) == 2 and len(i.embeddings) == 3
        assert all(unit(v) and len(v) == 16 for v in t.embeddings + i.embeddings)
        assert t.tokens > 0 and i.tokens == 0
        assert i.embeddings[0] != i.embeddings[1]


async def test_the_multilingual_text_tower_shares_its_clips_space(client: ModelHostClient) -> None:
    reply = await client.models()
    assert reply.family == "embed" and reply.service == "embed-svc"
    assert set(MODELS) <= {m.id for m in reply.data} and reply.worker_pid is not None
    t = await embed.embed_texts(client, "tiny-clip-multilingual", ["un chat", "кошка", "猫"], timeout_s=60)
    clip = await embed.embed_images(client, "tiny-clip", [photo(4)], timeout_s=60)
    assert t.dim == clip.dim and all(unit(v) for v in t.embeddings)


async def test_one_request_of_many_texts_gives_each_the_vector_it_gets_alone(client: ModelHostClient) -> None:
    texts = [f"a photo of {w}" for w in ("a cat", "two dogs", "a red car", "the sky", "a train", "grass", "water",
                                         "a table", "a street", "a child")]
    together = await embed.embed_texts(client, "tiny-clip", texts, timeout_s=60)
    for text, vector in zip(texts, together.embeddings):
        [alone] = (await embed.embed_texts(client, "tiny-clip", [text], timeout_s=60)).embeddings
        assert max(abs(a - b) for a, b in zip(alone, vector)) < 1e-5


async def test_bad_input_is_the_services_4xx_envelope_and_it_stays_up(client: ModelHostClient,
                                                                       embed_svc: procs.Proc) -> None:  # noqa: F811
    cases = [
        (embed.embed_texts(client, "tiny-clip", [], timeout_s=30), 400, "empty_input"),
        (embed.embed_texts(client, "tiny-clip", ["x" * (embed.MAX_TEXT_CHARS + 1)], timeout_s=30), 400, "text_too_long"),
        (embed.embed_images(client, "tiny-clip-multilingual", [photo(1)], timeout_s=30), 400, "unsupported_input"),
        (embed.embed_images(client, "tiny-clip", [photo(1)[:60]], timeout_s=30), 400, "corrupt_image"),
        (embed.embed_images(client, "tiny-clip", [b"%PDF-1.4 not a picture"], timeout_s=30), 415, "unsupported_media_type"),
        (embed.embed_images(client, "tiny-clip", [b"\0" * (300_000)], timeout_s=30), 413, None),
        (embed.embed_texts(client, "no-such-model", ["a"], timeout_s=30), 404, "model_not_found"),
    ]
    for call, status, code in cases:
        with pytest.raises(UpstreamEnvelope) as e:
            await call
        assert e.value.status == status and e.value.src == "embed-svc", (status, code, e.value.message)
        if code is not None:
            assert e.value.code == code
    assert embed_svc.proc.poll() is None
    assert len((await embed.embed_texts(client, "tiny-clip", ["still here"], timeout_s=30)).embeddings) == 1


def test_every_operation_answers_hostile_input_with_a_4xx_envelope(embed_svc: procs.Proc) -> None:  # noqa: F811
    """The corpus tests/test_hostile_inputs_proc.py sends every family service, sent to embed-svc."""
    from tests.test_hostile_inputs_proc import assert_options_allow_the_documents_methods, sweep

    with httpx.Client(base_url=embed_svc.url, timeout=60, headers=procs.INTERNAL_HEADERS) as c:
        assert sweep(c) > 50
        assert assert_options_allow_the_documents_methods(c) > 5
    assert embed_svc.proc.poll() is None


def test_the_service_needs_the_internal_credential(embed_svc: procs.Proc) -> None:  # noqa: F811
    r = httpx.post(embed_svc.url + embed.TEXT_PATH, json={"model": "tiny-clip", "texts": ["a"]}, timeout=30)
    assert r.status_code == 401 and r.json()["src"] == "embed-svc"


async def test_unloading_every_model_ends_the_worker(client: ModelHostClient, embed_svc: procs.Proc) -> None:  # noqa: F811
    replies = [await client.unload(model, drain=True, timeout_s=60) for model in MODELS]
    assert replies[-1].worker_stopped
    reply = await client.models()
    assert all(m.state == "unloaded" for m in reply.data) and reply.worker_pid is None
    metrics = (await asyncio.to_thread(httpx.get, embed_svc.url + "/metrics", timeout=10)).text
    assert 'roundhouse_model_state{family="embed",model="tiny-clip",state="unloaded"} 1.0' in metrics
    with pytest.raises(UpstreamEnvelope) as e:
        await embed.embed_texts(client, "tiny-clip", ["a"], timeout_s=30)
    assert e.value.status == 503 and e.value.code == "model_not_ready"
