"""End to end through the compose stack: the images built and run by `docker compose`, driven only
through the gateway's published port (ROUNDHOUSE_URL). Run by scripts/compose_test.sh."""

from __future__ import annotations

import io
import os

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.compose

URL = os.environ.get("ROUNDHOUSE_URL", "http://127.0.0.1:8080")


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    with httpx.Client(base_url=URL, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def models(client: httpx.Client) -> list[dict]:
    r = client.get("/v1/models")
    assert r.status_code == 200, r.text
    return r.json()["data"]


def first(models: list[dict], family: str, backend: str | None = None) -> str:
    for m in models:
        if m["family"] == family and (backend is None or m["backend"] == backend):
            return m["id"]
    raise AssertionError(f"no {family}/{backend} model in the catalog: {[m['id'] for m in models]}")


def photo() -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((96, 64)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def test_every_service_is_reachable_from_the_gateway(client: httpx.Client) -> None:
    r = client.get("/health/ready")
    assert r.status_code == 200, r.text
    services = client.get("/admin/models").json()["services"]
    assert set(services) == {"caption", "face", "asr", "tts", "embed"}
    assert all(s["reachable"] for s in services.values()), services


def test_caption_through_the_stack(client: httpx.Client, models: list[dict]) -> None:
    r = client.post("/v1/images/captions", files={"file": ("p.jpg", photo())}, data={"model": first(models, "caption")})
    assert r.status_code == 200, r.text
    assert r.json()["caption"].strip()


def test_face_detection_through_the_stack(client: httpx.Client, models: list[dict]) -> None:
    r = client.post("/v1/faces/detect", files={"file": ("p.jpg", photo())}, data={"model": first(models, "face")})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["faces"], list)


def test_speech_synthesis_and_transcription_round_trip(client: httpx.Client, models: list[dict]) -> None:
    sentence = "the quick brown fox jumps over the lazy dog"
    r = client.post("/v1/audio/speech", json={"model": first(models, "tts", "flite"), "input": sentence,
                                               "voice": "slt", "response_format": "wav"})
    assert r.status_code == 200, r.text
    wav = r.content
    assert wav[:4] == b"RIFF" and len(wav) > 10_000
    r = client.post("/v1/audio/transcriptions", files={"file": ("s.wav", wav, "audio/wav")},
                    data={"model": first(models, "asr", "pocketsphinx"), "response_format": "json"})
    assert r.status_code == 200, r.text
    words = set(r.json()["text"].lower().split())
    assert len(words & set(sentence.split())) >= 5, r.json()["text"]


def test_text_and_image_embeddings_share_one_space(client: httpx.Client, models: list[dict]) -> None:
    model = first(models, "embed", "clip")
    texts = client.post("/v1/embeddings", json={"model": model, "input": ["a photo", "a sound"]})
    assert texts.status_code == 200, texts.text
    image = client.post("/v1/embeddings", files={"file": ("p.jpg", photo())}, data={"model": model})
    assert image.status_code == 200, image.text
    vectors = [d["embedding"] for d in texts.json()["data"] + image.json()["data"]]
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1  # one space, one size
    assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)  # normalised


def test_bad_input_gets_an_envelope_and_the_stack_stays_up(client: httpx.Client) -> None:
    r = client.post("/v1/images/captions", files={"file": ("a.txt", b"not an image")})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert client.get("/health/ready").status_code == 200


def test_admin_views_show_the_ledger_and_every_model(client: httpx.Client, models: list[dict]) -> None:
    admin = client.get("/admin/models").json()
    assert {m["id"] for m in admin["data"]} == {m["id"] for m in models}
    assert any(m["state"] == "ready" for m in admin["data"])
    gpu = client.get("/admin/gpu").json()
    cpu = gpu["devices"]["cpu"]  # compose.cpu.yml moves every model to the CPU ledger
    assert 0 < cpu["used_bytes"] <= cpu["budget_bytes"]
    assert gpu["unverified_releases"] == 0
