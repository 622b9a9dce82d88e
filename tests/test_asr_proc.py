"""Speech to text end to end: the official ``openai`` client against the real gateway and the real asr service,
as processes on loopback, with pocketsphinx's shipped en-US model and the tiny Whisper models built locally.

Real transcription: flite (Debian) speaks sentences at test time and pocketsphinx, through the gateway,
must write them down with a word error rate of at most 0.1 (measured: 0.0). Every response format comes back
as the client expects it. Bad input gets its 4xx envelope and both processes stay up.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests import procs
from tests.asr_fixtures import (  # noqa: F401 - fixtures
    MAX_AUDIO_S,
    MAX_UPLOAD_BYTES,
    SENTENCES,
    asr_catalog,
    asr_gateway,
    asr_logdir,
    asr_svc,
    flite_wav,
    wav,
    word_error_rate,
)

pytestmark = pytest.mark.proc

PS = "pocketsphinx-en-us"
WHISPERS = ["tiny-whisper", "tiny-faster-whisper"]
TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def client(asr_gateway: procs.Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=asr_gateway.url + "/v1", api_key="unused-without-GATEWAY_API_KEYS",
                         timeout=TIMEOUT_S, max_retries=0)


@pytest.fixture(scope="module")
def fox() -> bytes:
    return flite_wav("the quick brown fox jumps over the lazy dog")


@pytest.fixture(scope="module")
def yes() -> bytes:
    """A short utterance: the request that shows a service still serves after a bad one."""
    return flite_wav("what time is it")


def test_pocketsphinx_writes_down_flite_speech_with_word_error_rate_at_most_one_in_ten(client: openai.OpenAI) -> None:
    rates = []
    for sentence in SENTENCES:
        got = client.audio.transcriptions.create(model=PS, file=("speech.wav", flite_wav(sentence)))
        rates.append(word_error_rate(sentence.split(), got.text.split()))
    assert len(SENTENCES) >= 5
    assert sum(rates) / len(rates) <= 0.1, list(zip(SENTENCES, rates))


def test_json_is_the_text_with_its_usage(client: openai.OpenAI, fox: bytes) -> None:
    got = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="json")
    assert isinstance(got, openai.types.audio.Transcription)
    assert got.text == "the quick brown fox jumps over the lazy dog"
    assert got.usage.type == "duration" and got.usage.seconds == 3


def test_text_is_plain_text(client: openai.OpenAI, asr_gateway: procs.Proc, fox: bytes) -> None:
    got = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="text")
    assert got == "the quick brown fox jumps over the lazy dog\n"
    r = httpx.post(asr_gateway.url + "/v1/audio/transcriptions", files={"file": ("fox.wav", fox)},
                   data={"model": PS, "response_format": "text"}, timeout=TIMEOUT_S)
    assert r.headers["content-type"].startswith("text/plain")


def test_srt_and_vtt_are_subtitles_of_the_segments(client: openai.OpenAI, fox: bytes) -> None:
    srt = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="srt")
    lines = srt.splitlines()
    assert lines[0] == "1" and lines[1].startswith("00:00:00,") and " --> 00:00:0" in lines[1]
    assert lines[2] == "the quick brown fox jumps over the lazy dog"
    vtt = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="vtt")
    lines = vtt.splitlines()
    assert lines[0] == "WEBVTT" and lines[1] == ""
    assert lines[2].startswith("00:00:00.") and " --> 00:00:0" in lines[2]
    assert lines[3] == "the quick brown fox jumps over the lazy dog"


def test_verbose_json_has_segments_and_words_when_asked(client: openai.OpenAI, fox: bytes) -> None:
    got = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="verbose_json",
                                             timestamp_granularities=["word", "segment"])
    assert isinstance(got, openai.types.audio.TranscriptionVerbose)
    assert got.language == "english" and got.duration == pytest.approx(2.97, abs=0.1)
    assert got.text == "the quick brown fox jumps over the lazy dog"
    assert [s.text for s in got.segments] == [got.text]
    assert [w.word for w in got.words] == got.text.split()
    assert all(0 <= w.start < w.end <= got.duration for w in got.words)
    plain = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="verbose_json")
    assert plain.segments and plain.words is None  # words only when asked for, as OpenAI does
    words_only = client.audio.transcriptions.create(model=PS, file=("fox.wav", fox), response_format="verbose_json",
                                                    timestamp_granularities=["word"])
    assert words_only.words and words_only.segments is None


@pytest.mark.parametrize("model", WHISPERS)
@pytest.mark.parametrize("response_format", ["json", "text", "srt", "vtt", "verbose_json"])
def test_whisper_models_answer_every_response_format(client: openai.OpenAI, fox: bytes, model: str,
                                                     response_format: str) -> None:
    # The tiny models have random weights and a decoder that always says "hello".
    got = client.audio.transcriptions.create(model=model, file=("fox.wav", fox), response_format=response_format,
                                             language="en")
    if response_format == "json":
        assert got.text.startswith("hello")
    elif response_format == "text":
        assert got.startswith("hello") and got.endswith("\n")
    elif response_format == "srt":
        assert got.startswith("1\n00:00:") and "hello" in got
    elif response_format == "vtt":
        assert got.startswith("WEBVTT\n\n00:00:") and "hello" in got
    else:
        assert got.language == "english" and got.text.startswith("hello")
        assert got.segments and all(0 <= s.start <= s.end <= got.duration for s in got.segments)
        assert all(isinstance(s.tokens, list) and s.avg_logprob <= 0 for s in got.segments)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks translations deprecated
def test_faster_whisper_words_and_translation(client: openai.OpenAI, fox: bytes) -> None:
    got = client.audio.transcriptions.create(model="tiny-faster-whisper", file=("fox.wav", fox),
                                             response_format="verbose_json", timestamp_granularities=["word"])
    assert got.words and all(w.word == "hello" for w in got.words)
    translated = client.audio.translations.create(model="tiny-faster-whisper", file=("fox.wav", fox),
                                                  response_format="verbose_json")
    assert translated.text.startswith("hello") and translated.duration == pytest.approx(2.97, abs=0.1)
    assert client.audio.translations.create(model="tiny-whisper", file=("fox.wav", fox), response_format="text").startswith("hello")


def test_silence_is_an_empty_transcript(client: openai.OpenAI) -> None:
    got = client.audio.transcriptions.create(model=PS, file=("silence.wav", wav(2.0)), response_format="verbose_json")
    assert got.text == "" and got.segments == [] and got.duration == 2.0
    assert client.audio.transcriptions.create(model=PS, file=("silence.wav", wav(2.0)), response_format="srt") == ""


def test_model_list_shows_the_asr_models(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {PS, *WHISPERS} <= ids


def assert_envelope(r: httpx.Response, status: int, code: str, src: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"src", "request_id", "error"}, body
    assert (body["src"], body["error"]["code"]) == (src, code), body
    assert r.headers["x-request-id"] == body["request_id"]


def _post(path: str = "/v1/audio/transcriptions", file: bytes | None = b"", **data: str) -> dict:
    data.setdefault("model", PS)
    files = {"file": ("audio.wav", file)} if file is not None else {"other": ("x", b"x")}
    return {"path": path, "files": files, "data": data}


BAD_INPUTS = [
    # (name, request, status, code, src)
    ("not audio", _post(file=b"hello, I am text and not audio\n" * 20), 415, "unsupported_media_type", "asr-svc"),
    ("an image", _post(file=b"\x89PNG\r\n\x1a\n" + b"\0" * 64), 415, "unsupported_media_type", "asr-svc"),
    ("zero bytes", _post(file=b""), 400, "empty_file", "gateway"),
    ("no samples", _post(file=wav(0.0)), 400, "empty_audio", "asr-svc"),
    ("no file field", _post(file=None), 400, "missing_file", "gateway"),
    ("over the size limit", _post(file=b"RIFF" + b"\0" * (MAX_UPLOAD_BYTES + 10)), 413, "payload_too_large", "gateway"),
    ("over the duration limit", _post(file=wav(MAX_AUDIO_S + 2, rate=8000)), 413, "audio_too_long", "asr-svc"),
    ("unknown model", _post(file=wav(1.0, freq=440), model="whisper-9000"), 404, "model_not_found", "gateway"),
    ("unknown response format", _post(file=wav(1.0, freq=440), response_format="xml"), 400, "unsupported_response_format", "gateway"),
    ("diarized_json", _post(file=wav(1.0, freq=440), response_format="diarized_json"), 400, "unsupported_response_format", "gateway"),
    ("granularity without verbose_json", _post(file=wav(1.0, freq=440), **{"timestamp_granularities[]": "word"}), 400,
     "unsupported_timestamp_granularity", "gateway"),
    ("unknown granularity", _post(file=wav(1.0, freq=440), response_format="verbose_json",
                                  **{"timestamp_granularities[]": "phoneme"}), 400, "unsupported_timestamp_granularity", "gateway"),
    ("temperature out of range", _post(file=wav(1.0, freq=440), temperature="1.5"), 400, "temperature_out_of_range", "gateway"),
    ("temperature not a number", _post(file=wav(1.0, freq=440), temperature="warm"), 400, "temperature_out_of_range", "gateway"),
    ("unknown language", _post(file=wav(1.0, freq=440), language="klingon"), 400, "unsupported_language", "gateway"),
    ("language the model lacks", _post(file=wav(1.0, freq=440), language="fr"), 400, "unsupported_language", "asr-svc"),
    ("pocketsphinx translation", _post("/v1/audio/translations", file=wav(1.0, freq=440)), 400, "translation_not_supported", "asr-svc"),
    ("streaming", _post(file=wav(1.0, freq=440), stream="true"), 400, "streaming_not_supported", "gateway"),
]


@pytest.mark.parametrize("name,req,status,code,src", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_4xx_envelope_and_both_processes_stay_up(asr_gateway: procs.Proc, asr_svc: procs.Proc,
                                                                     yes: bytes, name: str, req: dict, status: int,
                                                                     code: str, src: str) -> None:
    r = httpx.post(asr_gateway.url + req["path"], files=req["files"], data=req["data"], timeout=TIMEOUT_S)
    assert_envelope(r, status, code, src)
    assert asr_gateway.proc.poll() is None and asr_svc.proc.poll() is None
    ok = httpx.post(asr_gateway.url + "/v1/audio/transcriptions", files={"file": ("yes.wav", yes)},
                    data={"model": PS, "response_format": "text"}, timeout=TIMEOUT_S)
    assert ok.status_code == 200 and ok.text == "what time is it\n", ok.text


def test_wrong_content_type_is_415(asr_gateway: procs.Proc) -> None:
    r = httpx.post(asr_gateway.url + "/v1/audio/transcriptions", json={"file": "x", "model": PS}, timeout=TIMEOUT_S)
    assert_envelope(r, 415, "unsupported_content_type", "gateway")


def test_the_openai_client_raises_its_own_error_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(1.0, freq=440)))
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model=PS, file=("a.wav", wav(1.0, freq=440)), response_format="xml")  # type: ignore[arg-type]
