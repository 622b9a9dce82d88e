"""The whole asr service in-process: ``create_app()`` with its real runtime, worker process and backends
(pocketsphinx's shipped model and the tiny faster-whisper model), driven over HTTP through httpx's ASGI
transport. Every bad input gets its envelope before any model work, and the service keeps serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import numpy as np
import pytest
import pytest_asyncio
from fastapi import FastAPI

from asr_svc.config import AsrSettings
from asr_svc.main import create_app
from modelhost.errors import REQUEST_ID_HEADER
from modelhost.meter import HostMeter

# One service (and its worker, with two models loaded) for the whole module: its event loop too.
pytestmark = [pytest.mark.app, pytest.mark.asyncio(loop_scope="module")]

TIMEOUT_S = 120.0
PS = "pocketsphinx-en-us"
FW = "tiny-faster-whisper"
MAX_UPLOAD_BYTES = 400_000
MAX_AUDIO_S = 12.0


@pytest.fixture(scope="module")
def settings(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsrSettings:
    return AsrSettings(catalog=tiny_dir / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"),
                       max_upload_bytes=MAX_UPLOAD_BYTES, max_audio_s=MAX_AUDIO_S)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def app(settings: AsrSettings) -> AsyncIterator[FastAPI]:
    app = create_app(settings, meter=HostMeter())
    async with app.router.lifespan_context(app):
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://asr-svc", timeout=TIMEOUT_S) as c:
        for model in (PS, FW):
            r = await c.post(f"/v1/models/{model}/load")
            assert r.status_code == 200, r.text
        yield c


async def transcribe(client: httpx.AsyncClient, data: bytes, path: str = "/v1/transcriptions",
                     filename: str = "speech.wav", **fields: Any) -> httpx.Response:
    fields.setdefault("model", PS)
    return await client.post(path, files={"file": (filename, data)}, data={k: str(v) for k, v in fields.items()})


def assert_envelope(r: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "asr-svc" and body["error"]["code"] == code, body
    assert body["request_id"] == r.headers[REQUEST_ID_HEADER]
    if param is not None:
        assert body["error"]["param"] == param


def requests_counted(app: FastAPI, model: str) -> float:
    registry = app.state.host.metrics.registry
    return registry.get_sample_value("roundhouse_model_requests_total",
                                     {"family": "asr", "model": model, "outcome": "ok"}) or 0.0


async def test_flite_speech_is_transcribed_word_for_word(client, speech) -> None:
    r = await transcribe(client, speech("please turn on the kitchen lights"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "please turn on the kitchen lights"
    assert (body["object"], body["model"], body["task"], body["language"]) == ("audio.transcription", PS, "transcribe", "en")
    assert body["duration"] == pytest.approx(2.2, abs=0.6)
    assert body["words"] is None
    assert [s["text"] for s in body["segments"]] == [body["text"]]
    assert body["audio"] == {"container": "wav", "codec": "pcm_s16le", "sample_rate": 16000, "channels": 1,
                             "peak_dbfs": body["audio"]["peak_dbfs"], "silent": False}
    assert body["timings"]["decode_ms"] >= 0 and body["timings"]["inference_ms"] > 0


async def test_compressed_upload_gives_the_same_words_with_their_times(client, speech, kit) -> None:
    pcm = kit.pcm16(speech("one two three four five"))
    mp3 = kit.encode(pcm.astype(np.float32)[None, :] / 32768, 16000, "mp3")
    r = await transcribe(client, mp3, filename="speech.mp3", word_timestamps="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "one two three four five"
    assert body["audio"]["container"] == "mp3"
    assert [w["word"] for w in body["words"]] == body["text"].split()
    assert all(0 <= w["start"] < w["end"] <= body["duration"] for w in body["words"])


async def test_silence_gets_an_empty_transcript_without_running_the_model(app, client, kit) -> None:
    before = requests_counted(app, PS)
    r = await transcribe(client, kit.encode(np.zeros((1, 32000), np.float32), 16000, "wav"), word_timestamps="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["text"], body["segments"], body["words"], body["duration"]) == ("", [], [], 2.0)
    assert body["audio"]["silent"] is True and body["audio"]["peak_dbfs"] is None
    assert requests_counted(app, PS) == before


async def test_faster_whisper_translates(client, speech) -> None:
    r = await transcribe(client, speech("what time is it"), path="/v1/translations", model=FW, language="de")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == "translate" and body["language"] == "de"
    assert body["text"].startswith("hello")  # the tiny model's one word


async def test_language_names_and_regions_are_accepted(client, speech) -> None:
    for language in ("English", "en-US", "EN"):
        r = await transcribe(client, speech("what time is it"), language=language)
        assert r.status_code == 200, r.text
        assert r.json()["language"] == "en"


async def test_pocketsphinx_cannot_translate_and_says_so(client, speech) -> None:
    r = await transcribe(client, speech("what time is it"), path="/v1/translations")
    assert_envelope(r, 400, "translation_not_supported", "model")


@pytest.mark.parametrize("model, language", [(PS, "fr"), (FW, "xx"), (FW, "klingon")])
async def test_unsupported_language_is_400(client, speech, model: str, language: str) -> None:
    r = await transcribe(client, speech("what time is it"), model=model, language=language)
    assert_envelope(r, 400, "unsupported_language", "language")


async def test_unknown_model_is_404(client, speech) -> None:
    r = await transcribe(client, speech("what time is it"), model="whisper-huge")
    assert_envelope(r, 404, "model_not_found", "model")


async def test_bad_uploads_get_their_status_and_the_service_keeps_serving(client, kit, speech) -> None:
    assert_envelope(await transcribe(client, b"hello, I am text and not audio\n" * 10), 415, "unsupported_media_type", "file")
    assert_envelope(await transcribe(client, b""), 400, "empty_file", "file")
    assert_envelope(await transcribe(client, b"\0" * (MAX_UPLOAD_BYTES + 1)), 413, "payload_too_large", "file")
    long_flac = kit.encode(kit.tone(MAX_AUDIO_S + 3), 16000, "flac")
    assert len(long_flac) < MAX_UPLOAD_BYTES
    assert_envelope(await transcribe(client, long_flac, filename="long.flac"), 413, "audio_too_long", "file")
    assert_envelope(await transcribe(client, speech("what time is it"), prompt="x" * 5000), 400, "bad_request", "prompt")
    assert_envelope(await transcribe(client, speech("what time is it"), temperature="2"), 422, "validation_error")
    r = await transcribe(client, speech("what time is it"))
    assert r.status_code == 200 and r.json()["text"] == "what time is it"


async def test_a_model_not_loaded_is_503_model_not_ready(client, speech) -> None:
    r = await transcribe(client, speech("what time is it"), model="tiny-whisper")
    assert_envelope(r, 503, "model_not_ready")
    assert "retry-after" in r.headers


async def test_the_whisper_guards_can_be_turned_back_per_request(client, speech) -> None:
    for guards in ({"condition_on_previous_text": "true", "vad_filter": "true", "drop_repeats": "false"},
                   {"condition_on_previous_text": "false", "vad_filter": "false", "drop_repeats": "true"}):
        r = await transcribe(client, speech("what time is it"), model=FW, language="en", **guards)
        assert r.status_code == 200, r.text
        assert r.json()["text"].startswith("hello")  # the tiny model's one word
    assert_envelope(await transcribe(client, speech("what time is it"), model=FW, drop_repeats="maybe"), 422,
                    "validation_error")
