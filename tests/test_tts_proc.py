"""Text to speech through the real gateway and the real tts-svc, both processes on loopback, with the
tiny Piper voice, the tiny VITS, flite and espeak-ng. The official ``openai`` client is the client.

Checked: every response_format decodes; the audio streams (the first chunk arrives while later sentences
are still being synthesised, and a client that leaves stops the synthesis); every bad input gets its 4xx
envelope before any audio, and both processes stay up; odd text never crashes anything."""

from __future__ import annotations

import time

import httpx
import numpy as np
import openai
import pytest

from tests import procs
from tests.tts_fixtures import TTS_MAX_INPUT_CHARS, VOICES, decode, metric, tts_catalog, tts_gateway, tts_svc  # noqa: F401

pytestmark = pytest.mark.proc

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}


@pytest.fixture(scope="module")
def client(tts_gateway: procs.Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=tts_gateway.url + "/v1", api_key="unused-without-GATEWAY_API_KEYS", max_retries=0,
                         timeout=120)


def synthesised(tts_svc: procs.Proc, model: str) -> float:
    """Sentences the service has synthesised with ``model`` so far (one inference item each)."""
    text = httpx.get(tts_svc.url + "/metrics", timeout=10).text
    return metric(text, "roundhouse_model_requests_total", model=model, outcome="ok")


def model_row(tts_svc: procs.Proc, model: str) -> dict:
    rows = httpx.get(tts_svc.url + "/v1/models", headers=procs.INTERNAL_HEADERS, timeout=10).json()["data"]
    return next(r for r in rows if r["id"] == model)


@pytest.mark.parametrize("fmt", FORMATS)
def test_openai_client_gets_playable_audio_in_every_format(client: openai.OpenAI, fmt: str) -> None:
    r = client.audio.speech.create(model="flite", voice="slt", input="Hello there. This is Roundhouse speaking.",
                                   response_format=fmt)
    assert r.response.headers["content-type"] == CONTENT_TYPES[fmt]
    if fmt == "pcm":  # OpenAI's pcm: raw 16-bit little-endian mono at 24 kHz
        x, rate = np.frombuffer(r.content, "<i2").astype(np.float32) / 32768, 24_000
    else:
        x, rate = decode(r.content)
    assert 1.0 < len(x) / rate < 6.0
    assert float(np.abs(x).max()) > 0.05


@pytest.mark.parametrize("model", list(VOICES))
def test_every_tts_model_speaks_through_the_gateway(client: openai.OpenAI, model: str) -> None:
    r = client.audio.speech.create(model=model, voice=VOICES[model], input="One two three. Four five six.",
                                   response_format="wav", speed=1.25)
    x, rate = decode(r.content)
    assert rate == 24_000 and len(x) > 0.3 * rate


def test_voices_are_listed_per_model(tts_gateway: procs.Proc) -> None:
    r = httpx.get(tts_gateway.url + "/v1/audio/voices", timeout=30)
    assert r.status_code == 200, r.text
    listed = {m["model"]: {v["id"] for v in m["voices"]} for m in r.json()["data"]}
    assert set(listed) == set(VOICES)
    assert all(VOICES[m] in listed[m] for m in VOICES)
    assert {"slt", "rms", "awb"} <= listed["flite"] and len(listed["espeak-ng"]) > 100
    one = httpx.get(tts_gateway.url + "/v1/audio/voices", params={"model": "flite"}, timeout=30).json()["data"]
    assert [m["model"] for m in one] == ["flite"]
    r = httpx.get(tts_gateway.url + "/v1/audio/voices", params={"model": "nope"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_first_audio_arrives_before_the_last_sentence_is_synthesised(client: openai.OpenAI, tts_svc: procs.Proc) -> None:
    n = 12
    text = " ".join(f"This is sentence number {i} of a longer text." for i in range(n))
    client.audio.speech.create(model="tiny-vits", voice="tiny", input="Warm up.", response_format="pcm")  # loaded
    before = synthesised(tts_svc, "tiny-vits")
    done_at_chunk: list[float] = []  # sentences synthesised when each chunk arrived
    arrived: list[float] = []
    with client.audio.speech.with_streaming_response.create(model="tiny-vits", voice="tiny", input=text,
                                                            response_format="pcm") as resp:
        assert resp.headers["x-sentences"] == str(n)
        for chunk in resp.iter_bytes():
            if chunk:
                arrived.append(time.perf_counter())
                done_at_chunk.append(synthesised(tts_svc, "tiny-vits") - before)
    assert done_at_chunk[0] < n, done_at_chunk  # the first audio came while sentences were still to be made
    assert done_at_chunk[-1] == n
    assert done_at_chunk == sorted(done_at_chunk) and arrived == sorted(arrived)
    assert len(arrived) >= 3  # it came in pieces, sentence by sentence, not as one body


def holds_ended(tts_gateway: procs.Proc, model: str, outcome: str = "ok") -> float:
    """Holds of ``model`` the gateway has closed (each observes its time when it ends)."""
    text = httpx.get(tts_gateway.url + "/metrics", timeout=10).text
    return metric(text, "roundhouse_gateway_model_request_seconds_count", family="tts", model=model, outcome=outcome)


def test_the_model_is_held_until_the_last_byte_is_relayed(tts_gateway: procs.Proc) -> None:
    text = " ".join(f"This is sentence number {i}." for i in range(30))  # under TTS_MAX_INPUT_CHARS
    body = {"model": "tiny-vits", "voice": "tiny", "input": text, "response_format": "pcm"}
    httpx.post(tts_gateway.url + "/v1/audio/speech", json={**body, "input": "Warm up."}, timeout=120)
    before = holds_ended(tts_gateway, "tiny-vits")
    with httpx.stream("POST", tts_gateway.url + "/v1/audio/speech", json=body, timeout=120) as r:
        assert r.status_code == 200
        chunks = r.iter_bytes()
        next(chunks)
        assert holds_ended(tts_gateway, "tiny-vits") == before  # audio still to come: still held
        for _ in chunks:
            pass
    procs.wait_until(lambda: holds_ended(tts_gateway, "tiny-vits") == before + 1, timeout_s=30)


def test_a_client_that_leaves_mid_stream_stops_the_synthesis(tts_gateway: procs.Proc, tts_svc: procs.Proc) -> None:
    n = 40
    text = " ".join(f"Sentence {i} is here." for i in range(n))  # under TTS_MAX_INPUT_CHARS
    body = {"model": "tiny-vits", "voice": "tiny", "input": text, "response_format": "mp3"}
    httpx.post(tts_gateway.url + "/v1/audio/speech", json={**body, "input": "Warm up."}, timeout=120)
    before = synthesised(tts_svc, "tiny-vits")
    with httpx.stream("POST", tts_gateway.url + "/v1/audio/speech", json=body, timeout=120) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # the first audio, then hang up

    def idle() -> bool:  # the lease is back and the sentence that was running has finished
        row = model_row(tts_svc, "tiny-vits")
        return row["in_flight"] == 0 and row["queue_depth"] == 0

    procs.wait_until(idle, timeout_s=60)
    assert synthesised(tts_svc, "tiny-vits") - before < n  # the rest was cancelled, not made for nobody
    assert tts_gateway.proc.poll() is None and tts_svc.proc.poll() is None
    r = httpx.post(tts_gateway.url + "/v1/audio/speech", json={**body, "input": "Still serving."}, timeout=120)
    assert r.status_code == 200 and len(r.content) > 100


@pytest.mark.parametrize("text", ["...", "?!?!", "😀", "🎉 party 🎉", "1234567890", "3.14159 and 2,718",
                                  "Ünïcödé naïve café façade.", "Привет, мир. 你好世界。", "\u200b", "a" * TTS_MAX_INPUT_CHARS])
def test_odd_text_gives_audio_and_no_crash(tts_gateway: procs.Proc, tts_svc: procs.Proc, text: str) -> None:
    for model in ("flite", "tiny-piper"):
        r = httpx.post(tts_gateway.url + "/v1/audio/speech",
                       json={"model": model, "voice": VOICES[model], "input": text, "response_format": "wav"}, timeout=120)
        assert r.status_code == 200, r.text
        x, rate = decode(r.content)
        assert rate == 24_000 and len(x) > 0
    assert tts_gateway.proc.poll() is None and tts_svc.proc.poll() is None


def _speech(**body):  # noqa: ANN003, ANN202
    return {"json": {"model": "flite", "voice": "slt", "input": "hi", **body}}


BAD_INPUTS = [
    # (name, request kwargs, status, code, src)
    ("empty input", _speech(input=""), 400, "empty_input", "gateway"),
    ("white space input", _speech(input="  \n "), 400, "empty_input", "gateway"),
    ("missing input", {"json": {"model": "flite", "voice": "slt"}}, 400, "missing_input", "gateway"),
    ("input not a string", _speech(input=["hi"]), 400, "bad_request", "gateway"),
    ("input over the limit", _speech(input="a" * (TTS_MAX_INPUT_CHARS + 1)), 413, "input_too_long", "gateway"),
    ("body over the limit", {"content": b'{"input": "' + b"a" * 10_000_000 + b'"}',
                             "headers": {"content-type": "application/json"}}, 413, "payload_too_large", "gateway"),
    ("unknown model", _speech(model="no-such-model"), 404, "model_not_found", "gateway"),
    ("model of another family", _speech(model="tiny-blip"), 404, "model_not_found", "gateway"),
    ("unknown voice", _speech(voice="nobody"), 404, "voice_not_found", "gateway"),
    ("unknown format", _speech(response_format="ogg"), 400, "unsupported_response_format", "gateway"),
    ("speed too low", _speech(speed=0.2), 400, "speed_out_of_range", "gateway"),
    ("speed too high", _speech(speed=4.01), 400, "speed_out_of_range", "gateway"),
    ("speed not a number", _speech(speed="fast"), 400, "bad_request", "gateway"),
    ("sse streaming", _speech(stream_format="sse"), 400, "unsupported_stream_format", "gateway"),
    ("malformed json", {"content": b'{"input": ', "headers": {"content-type": "application/json"}}, 400, "invalid_json", "gateway"),
    ("json not an object", {"json": ["hi"]}, 400, "invalid_json", "gateway"),
]


@pytest.mark.parametrize("name,kwargs,status,code,src", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_envelope_before_any_audio(tts_gateway: procs.Proc, tts_svc: procs.Proc, name: str,
                                                        kwargs: dict, status: int, code: str, src: str) -> None:
    before = synthesised(tts_svc, "flite")
    r = httpx.post(tts_gateway.url + "/v1/audio/speech", timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["src"] == src and body["error"]["code"] == code, body
    assert r.headers["x-request-id"] == body["request_id"]
    assert synthesised(tts_svc, "flite") == before  # nothing was synthesised
    assert tts_gateway.proc.poll() is None and tts_svc.proc.poll() is None
    ok = httpx.post(tts_gateway.url + "/v1/audio/speech", json={"model": "flite", "voice": "slt", "input": "Still here."},
                    timeout=60)
    assert ok.status_code == 200 and ok.headers["content-type"] == "audio/mpeg"


def test_openai_client_raises_its_own_error_classes(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="flite", voice="slt", input="")
    assert e.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="flite", voice="nobody", input="Hello.")
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice="slt", input="Hello.")
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="flite", voice="slt", input="Hello.", speed=10)


def test_language_extension_and_default_voice(tts_gateway: procs.Proc) -> None:
    r = httpx.post(tts_gateway.url + "/v1/audio/speech", json={"model": "espeak-ng", "input": "Bonjour.", "voice": "fr"},
                   timeout=60)
    assert r.status_code == 200 and decode(r.content)[0].size > 0
    r = httpx.post(tts_gateway.url + "/v1/audio/speech", json={"model": "flite", "input": "No voice named."}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
