"""tts-svc through HTTP: create_app with the real worker, the tiny Piper voice, the tiny VITS, flite and
espeak-ng, on CPU.

What the service promises at its edge: every response format is playable audio of the sentences asked
for, every bad input gets its own 4xx envelope before any synthesis, odd text never crashes it, and the
lease is given back when the stream ends. (Streaming order is checked in the proc tier: the test client
here reads whole bodies.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tts_svc.config import TtsSettings
from tts_svc.encoding import FORMATS, OUTPUT_SAMPLE_RATE
from tts_svc.main import create_app

pytestmark = pytest.mark.app

# piper-joe: the real voice the tts builder lays out first (tools/make_tiny_tts_models.py)
MODELS = {"piper-joe": "joe", "tiny-piper": "tiny", "tiny-vits": "tiny", "flite": "slt", "espeak-ng": "en-us"}
MAX_INPUT_CHARS = 500
LONGEST = ("Short sentence number one. " * 20)[:MAX_INPUT_CHARS]  # exactly at the limit
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


@pytest.fixture(scope="module")
def client(tts_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = TtsSettings(catalog=tts_models_dir / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"),
                           max_input_chars=MAX_INPUT_CHARS)
    with TestClient(create_app(settings)) as c:
        for model in MODELS:
            r = c.post(f"/v1/models/{model}/load")
            assert r.status_code == 200, r.text
        yield c


def speak(client: TestClient, **body: Any):  # noqa: ANN201 - httpx.Response
    return client.post("/v1/audio/speech", json={"model": "flite", "voice": "slt", **body})


def samples_of(r, fmt: str, decode) -> tuple[np.ndarray, int]:  # noqa: ANN001
    if fmt == "pcm":
        return np.frombuffer(r.content, "<i2").astype(np.float32) / 32768, OUTPUT_SAMPLE_RATE
    return decode(r.content)


def assert_envelope(r, status: int, code: str, param: str | None = None) -> None:  # noqa: ANN001
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "tts-svc" and body["error"]["code"] == code, body
    if param:
        assert body["error"]["param"] == param


def test_voices_are_listed_per_model(client: TestClient) -> None:
    r = client.get("/v1/audio/voices")
    assert r.status_code == 200
    listed = {m["model"]: [v["id"] for v in m["voices"]] for m in r.json()["data"]}
    assert set(listed) == set(MODELS)
    for model, voice in MODELS.items():
        assert voice in listed[model]
    one = client.get("/v1/audio/voices", params={"model": "flite"}).json()["data"]
    assert [m["model"] for m in one] == ["flite"]
    assert_envelope(client.get("/v1/audio/voices", params={"model": "nope"}), 404, "model_not_found")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_is_playable_audio_of_the_right_length(client: TestClient, fmt: str, decode) -> None:  # noqa: ANN001
    text = "Hello there. This is the second sentence of three. Goodbye!"
    r = speak(client, input=text, response_format=fmt)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPES[fmt]
    assert r.headers["x-sentences"] == "3" and r.headers["x-sample-rate"] == str(OUTPUT_SAMPLE_RATE)
    x, rate = samples_of(r, fmt, decode)
    assert 2.0 < len(x) / rate < 8.0  # three short sentences of flite speech
    assert float(np.abs(x).max()) > 0.05


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_speaks_through_the_route(client: TestClient, model: str, decode) -> None:  # noqa: ANN001
    r = client.post("/v1/audio/speech", json={"model": model, "voice": MODELS[model], "input": "One. Two. Three.",
                                              "response_format": "wav"})
    assert r.status_code == 200, r.text
    x, rate = decode(r.content)
    assert rate == OUTPUT_SAMPLE_RATE and len(x) > rate * 0.3


def test_voice_defaults_to_the_models_first(client: TestClient) -> None:
    r = client.post("/v1/audio/speech", json={"model": "flite", "input": "Hello.", "response_format": "pcm"})
    assert r.status_code == 200 and len(r.content) > 1000


def test_speed_makes_the_same_text_shorter_or_longer(client: TestClient) -> None:
    lengths = {s: len(speak(client, input="The quick brown fox jumps over the lazy dog.", response_format="pcm", speed=s).content)
               for s in (0.5, 1.0, 2.0)}
    assert lengths[0.5] > 1.6 * lengths[1.0] > 1.6 * 1.6 * lengths[2.0]


@pytest.mark.parametrize("text", ["...", "?!", "😀", "🎉 🎉 🎉", "12345", "3.14159", "Ünïcödé naïve café.",
                                  "Привет, мир.", "日本語のテキスト。", "\u200b\u200bzero width", LONGEST])
@pytest.mark.parametrize("model", ["flite", "tiny-vits"])
def test_odd_text_gives_valid_audio_without_a_crash(client: TestClient, model: str, text: str, decode) -> None:  # noqa: ANN001
    r = client.post("/v1/audio/speech", json={"model": model, "voice": MODELS[model], "input": text, "response_format": "wav"})
    assert r.status_code == 200, r.text
    x, rate = decode(r.content)
    assert rate == OUTPUT_SAMPLE_RATE  # a pause (punctuation, emoji) or speech, never an error


def test_punctuation_only_input_is_a_short_pause(client: TestClient) -> None:
    r = speak(client, input="?!...", response_format="pcm")
    assert r.status_code == 200
    assert len(r.content) == 2 * int(0.25 * OUTPUT_SAMPLE_RATE) and not any(r.content)


BAD = [
    ("empty input", {"input": ""}, 400, "empty_input", "input"),
    ("white space only", {"input": " \n\t "}, 400, "empty_input", "input"),
    ("input over the limit", {"input": "a" * (MAX_INPUT_CHARS + 1)}, 413, "input_too_long", "input"),
    ("unknown model", {"model": "no-such-model", "input": "hi"}, 404, "model_not_found", "model"),
    ("unknown voice", {"voice": "nobody", "input": "hi"}, 404, "voice_not_found", "voice"),
    ("unknown format", {"input": "hi", "response_format": "ogg"}, 400, "unsupported_response_format", "response_format"),
    ("speed too low", {"input": "hi", "speed": 0.1}, 400, "speed_out_of_range", "speed"),
    ("speed too high", {"input": "hi", "speed": 4.5}, 400, "speed_out_of_range", "speed"),
    ("speed not a number", {"input": "hi", "speed": "fast"}, 422, "validation_error", "speed"),
    ("input not a string", {"input": ["a", "b"]}, 422, "validation_error", "input"),
]


@pytest.mark.parametrize("name,body,status,code,param", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_envelope_and_the_service_keeps_serving(client: TestClient, name: str, body: dict,
                                                                   status: int, code: str, param: str) -> None:
    assert_envelope(speak(client, **body), status, code, param)
    ok = speak(client, input="Still here.", response_format="pcm")
    assert ok.status_code == 200 and len(ok.content) > 1000


def test_a_model_that_is_not_loaded_answers_503_until_loaded(client: TestClient) -> None:
    r = client.post("/v1/models/espeak-ng/unload")
    assert r.status_code == 200, r.text
    try:
        r = client.post("/v1/audio/speech", json={"model": "espeak-ng", "voice": "en-us", "input": "hi"})
        assert_envelope(r, 503, "model_not_ready")
        assert "retry-after" in r.headers
    finally:
        assert client.post("/v1/models/espeak-ng/load").status_code == 200


def test_the_lease_is_given_back_when_the_stream_ends(client: TestClient) -> None:
    for fmt in ("mp3", "wav"):
        assert speak(client, input="One. Two. Three. Four.", response_format=fmt).status_code == 200
    rows = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert all(rows[m]["in_flight"] == 0 and rows[m]["queue_depth"] == 0 for m in MODELS)
