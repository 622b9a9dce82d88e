"""The tts family's contract: each bad speech request gets its own 4xx code, the voice a request gets, and
what ``speak`` and ``voices`` send."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import pytest

from modelhost.errors import NotFound, RoundhouseError, UpstreamError
from modelhost.families import tts

pytestmark = pytest.mark.unit

LIMIT = 20

BAD = [
    # (name, body, status, code, param)
    ("missing input", {"model": "flite"}, 400, "missing_input", "input"),
    ("null input", {"input": None}, 400, "missing_input", "input"),
    ("input not a string", {"input": ["hi"]}, 400, "bad_request", "input"),
    ("empty input", {"input": ""}, 400, "empty_input", "input"),
    ("white space input", {"input": " \n\t"}, 400, "empty_input", "input"),
    ("control characters only", {"input": "\x00\x1b"}, 400, "empty_input", "input"),
    ("input over the limit", {"input": "a" * (LIMIT + 1)}, 413, "input_too_long", "input"),
    ("model not a string", {"input": "hi", "model": 1}, 400, "bad_request", "model"),
    ("unknown format", {"input": "hi", "response_format": "ogg"}, 400, "unsupported_response_format", "response_format"),
    ("speed too low", {"input": "hi", "speed": 0.2}, 400, "speed_out_of_range", "speed"),
    ("speed too high", {"input": "hi", "speed": 4.01}, 400, "speed_out_of_range", "speed"),
    ("speed a string", {"input": "hi", "speed": "1.5"}, 400, "bad_request", "speed"),
    ("speed a boolean", {"input": "hi", "speed": True}, 400, "bad_request", "speed"),
    ("speed not finite", {"input": "hi", "speed": float("inf")}, 400, "bad_request", "speed"),
    ("sse streaming", {"input": "hi", "stream_format": "sse"}, 400, "unsupported_stream_format", "stream_format"),
]


@pytest.mark.parametrize("name, body, status, code, param", BAD, ids=[b[0] for b in BAD])
def test_each_bad_request_gets_its_own_status_and_code(name: str, body: dict, status: int, code: str, param: str) -> None:
    with pytest.raises(RoundhouseError) as e:
        tts.speech_request(body, max_input_chars=LIMIT)
    assert (e.value.status, e.value.code, e.value.param) == (status, code, param)


def test_limits_pass_and_nulls_are_the_defaults() -> None:
    req = tts.speech_request({"input": "a" * LIMIT, "speed": None, "response_format": None, "extra": 1},
                             max_input_chars=LIMIT)
    assert (req.speed, req.response_format, req.model, req.voice) == (1.0, "mp3", None, None)
    for speed in (tts.MIN_SPEED, tts.MAX_SPEED, 1):
        assert tts.speech_request({"input": "hi", "speed": speed}, max_input_chars=LIMIT).speed == speed
    for fmt in tts.RESPONSE_FORMATS:
        assert tts.speech_request({"input": "hi", "response_format": fmt, "stream_format": "audio"},
                                  max_input_chars=LIMIT).response_format == fmt


def test_control_characters_are_spaces_and_a_lone_surrogate_is_a_replacement_character() -> None:
    req = tts.speech_request({"input": "a\x00b\x7fc\td\ud800 \ud83d\ude00"}, max_input_chars=LIMIT)
    assert req.input == "a b c\td\ufffd \U0001f600"
    req.input.encode("utf-8")


VOICES = tts.ModelVoices(model="flite", backend="flite", voices=[tts.VoiceCard(id="slt"), tts.VoiceCard(id="rms")])


def test_a_request_gets_the_voice_it_names_else_the_models_first() -> None:
    assert (VOICES.voice(None), VOICES.voice("rms")) == ("slt", "rms")
    for asked, voices in (("alloy", VOICES), (None, VOICES.model_copy(update={"voices": []}))):
        with pytest.raises(NotFound) as e:
            voices.voice(asked)
        assert (e.value.code, e.value.param) == ("voice_not_found", "voice")


class Recording:
    """An ``Upstream`` that records its calls and answers from ``reply``."""

    def __init__(self, reply: Any = None) -> None:
        self.reply = reply
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path, kwargs))
        return self.reply

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[Any]:
        self.calls.append((method, path, kwargs))
        yield "response"


async def test_speak_sends_what_was_asked_and_nothing_unset() -> None:
    upstream = Recording()
    req = tts.speech_request({"model": "flite", "input": "Hi.", "voice": "slt", "speed": 1.5, "stream_format": "audio"},
                             max_input_chars=LIMIT)
    async with tts.speak(upstream, req, first_byte_timeout_s=7, request_id="r1") as resp:
        assert resp == "response"
    method, path, kwargs = upstream.calls[0]
    assert (method, path) == ("POST", "/v1/audio/speech")
    assert kwargs == {"first_byte_timeout_s": 7, "request_id": "r1",
                      "json_body": {"model": "flite", "input": "Hi.", "voice": "slt", "response_format": "mp3", "speed": 1.5}}


async def test_voices_are_read_typed_and_an_odd_answer_is_502() -> None:
    upstream = Recording({"object": "list", "data": [VOICES.model_dump()]})
    assert await tts.voices(upstream, model="flite") == tts.VoiceList(data=[VOICES])
    assert upstream.calls[0][2]["params"] == {"model": "flite"}
    await tts.voices(upstream)
    assert upstream.calls[1][2]["params"] is None
    with pytest.raises(UpstreamError) as e:
        await tts.voices(Recording({"data": [{"model": "flite"}]}))
    assert (e.value.status, e.value.code) == (502, "bad_upstream_response")
