"""/v1/search and /v1/embeddings in the whole ``create_app()`` (app tier; the embed service is down): the
document declares their bodies, hostile bodies are 4xx in the envelope (never a 500), and a search over no
vectors answers at once without asking for the model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from gateway.config import CoordinatorSettings, GatewaySettings, JobSettings
from gateway.main import create_app
from tests.doubles.fake_nvml import FakeNvml
from tests.procs import free_port

pytestmark = pytest.mark.app

CATALOG = """\
defaults: {device: cpu}
models:
  - {id: clip, family: embed, backend: clip, source: ./nowhere-a, memory_estimate_mb: 64}
  - {id: text-only, family: embed, backend: sentence_transformer, source: ./nowhere-b, memory_estimate_mb: 64,
     options: {modalities: [text]}}
"""
DEEP = b"[" * 900 + b"]" * 900
HOSTILE = [
    (b"[" * 100_000 + b"]" * 100_000, "application/json"),
    (b'{"query": ' + DEEP + b', "input": ' + DEEP + b', "model": ' + DEEP + b', "jobs": ' + DEEP + b"}", "application/json"),
    (b'{"query": "x"}', "text/plain"),
    (b'{"query": "x"}', ""),
    (b'{"a": ', "application/json"),
    (b'{"a": "\xff\xfe"}', "application/json"),
    (b"[1, 2]", "application/json"),
    (b'{"query": "x", "k": 1e999, "min_score": -1e999, "model": 1e999, "input": 1e999}', "application/json"),
    (b'{"query": {"image": 5}, "input": [{"image": 5}], "model": "clip"}', "application/json"),
    (b'{"query": "x", "jobs": [1], "input": [[1, 2], "x"], "model": "clip"}', "application/json"),
    (b'--xx\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc', "multipart/form-data; boundary=xx"),
    (b"abc", "multipart/form-data"),
]


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"embed": f"http://127.0.0.1:{free_port()}"})
    app = create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", memory_budget_mb={"cpu": 1024},
                                                   reconcile_interval_s=None),
                     job_settings=JobSettings(library_roots=[tmp_path]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


def assert_envelope(r: httpx.Response, what: str) -> None:
    assert 400 <= r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    body = r.json()
    assert set(body) == {"src", "request_id", "error"} and body["error"]["code"] and body["error"]["message"], what


async def test_the_document_declares_both_routes_bodies(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    search = doc["paths"]["/v1/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"application/json"}
    assert {"400", "404", "409", "413", "415"} <= set(search["responses"])
    body = doc["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"} and "$defs" not in json.dumps(body)
    assert set(body["application/json"]["schema"]["required"]) == {"model", "input"}


async def test_hostile_bodies_are_4xx_in_the_envelope(client: httpx.AsyncClient) -> None:
    for path in ("/v1/search", "/v1/embeddings"):
        for content, ctype in HOSTILE:
            r = await client.post(path, content=content, headers={"content-type": ctype})
            assert_envelope(r, f"{path} {content[:40]!r} {ctype}")


async def test_a_search_over_no_vectors_answers_without_the_model(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/search", json={"query": "a dog on a beach"})
    assert r.status_code == 200, r.text  # the embed service is down: it was not asked
    assert r.json()["data"] == [] and r.json()["searched"] == 0 and r.json()["model"] == "clip"
    r = await client.post("/v1/search", json={"query": {"image": "aGVsbG8="}, "model": "text-only"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_input"
    r = await client.post("/v1/embeddings", json={"model": "clip", "input": [[1, 2, 3]]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_input"
