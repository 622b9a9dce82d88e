"""/v1/search and /v1/embeddings in the whole ``create_app()`` (app tier; the embed service is down): the
document declares their bodies, hostile bodies are 4xx in the envelope (never a 500), a search over no
vectors answers at once without asking for the model, and a search's multipart form is checked by the JSON
body's rules."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
from PIL import Image

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
    async with gateway(tmp_path, monkeypatch) as c:
        yield c


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"embed": f"http://127.0.0.1:{free_port()}"},
                               **overrides)
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
    assert set(search["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "$defs" not in json.dumps(search["requestBody"])
    assert set(search["requestBody"]["content"]["multipart/form-data"]["schema"]["required"]) == {"file"}
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


def png(size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


async def test_a_multipart_search_takes_the_image_as_file(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/search", files={"file": ("q.png", png(), "image/png")}, data={"model": "clip", "k": "5"})
    assert r.status_code == 200, r.text  # nothing indexed: the embed service (down) was not asked
    assert r.json()["query"]["modality"] == "image" and r.json()["model"] == "clip" and r.json()["data"] == []
    r = await client.post("/v1/search", files={"file": ("q.png", png(), "image/png")})
    assert r.status_code == 200 and r.json()["model"] == "clip", r.text  # the catalog's first embed model


@pytest.mark.parametrize(("fields", "file", "status", "code", "param"), [
    ({"model": "clip"}, None, 400, "missing_file", "file"),
    ({"model": "nope"}, png(), 404, "model_not_found", "model"),
    ({"model": "text-only"}, png(), 400, "unsupported_input", "model"),
    ({"model": "clip"}, b"not an image", 415, "unsupported_media_type", "file"),
    ({"k": "0"}, png(), 400, "bad_request", "k"),
    ({"k": "many"}, png(), 400, "bad_request", "k"),
    ({"min_score": "nan"}, png(), 400, "bad_request", "min_score"),
    ({"jobs": "no-such-job"}, png(), 404, "job_not_found", "jobs"),
    ({"jobs": ["a", "b"], "k": ["1", "2"]}, png(), 400, "bad_request", "k"),
    ({"jobs": [f"job-{i}" for i in range(100)]}, png(), 404, "job_not_found", "jobs"),
], ids=["no-file", "unknown-model", "text-only-model", "not-an-image", "k-0", "k-text", "min-score-nan", "unknown-job",
        "k-twice", "a-hundred-jobs"])
async def test_a_multipart_search_is_refused_as_its_json_would_be(
        client: httpx.AsyncClient, fields: dict, file: bytes | None, status: int, code: str | None,
        param: str | None) -> None:
    files = {"file": ("q.png", file, "image/png")} if file is not None else {"other": ("x.txt", b"x", "text/plain")}
    r = await client.post("/v1/search", files=files, data=fields)
    assert_envelope(r, str(fields))
    error = r.json()["error"]
    assert r.status_code == status and (code is None or error["code"] == code) and error["param"] == param, r.text


async def test_a_multipart_search_past_the_upload_limit_is_413(tmp_path: Path, client: httpx.AsyncClient) -> None:
    big = png() + b"\0" * (GatewaySettings().max_upload_bytes + 1)
    r = await client.post("/v1/search", files={"file": ("q.png", big, "image/png")})
    assert_envelope(r, "too big")
    assert r.status_code == 413, r.text


async def test_a_search_naming_no_model_gets_the_default_embed_model_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with gateway(tmp_path, monkeypatch, default_embed_model="text-only") as c:
        r = await c.post("/v1/search", json={"query": "a dog on a beach"})
        assert r.status_code == 200 and r.json()["model"] == "text-only", r.text
        r = await c.post("/v1/search", files={"file": ("q.png", png(), "image/png")})
        assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_input", r.text
