"""The asr family's contract: the options' limits and codes, and that what ``transcribe`` sends is what the
service's form model reads (a stand-in service built on ``TranscriptionForm``, in-process)."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, File, Form, UploadFile

from modelhost.errors import BadRequest, UpstreamError
from modelhost.families import asr

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("values, language", [
    ({}, None), ({"language": ""}, None), ({"language": None}, None), ({"language": "en"}, "en"),
    ({"language": "English"}, "en"), ({"language": "pt_BR"}, "pt"), ({"language": "haw"}, "haw"),
])
def test_language_is_read_as_whispers_code(values: dict, language: str | None) -> None:
    assert asr.options(values).language == language


@pytest.mark.parametrize("values, code, param", [
    ({"language": "klingon"}, "unsupported_language", "language"),
    ({"language": 5}, "unsupported_language", "language"),
    ({"temperature": "1.5"}, "temperature_out_of_range", "temperature"),
    ({"temperature": -0.1}, "temperature_out_of_range", "temperature"),
    ({"temperature": "warm"}, "temperature_out_of_range", "temperature"),
    ({"temperature": "nan"}, "temperature_out_of_range", "temperature"),
    ({"prompt": "x" * (asr.MAX_PROMPT_CHARS + 1)}, "bad_request", "prompt"),
    ({"prompt": ["a list"]}, "bad_request", "prompt"),
    ({"drop_repeats": "maybe"}, "bad_request", "drop_repeats"),
    ({"vad_filter": 2}, "bad_request", "vad_filter"),
    ({"vad_filter": "1"}, "bad_request", "vad_filter"),
    ({"condition_on_previous_text": "yes"}, "bad_request", "condition_on_previous_text"),
])
def test_each_bad_option_is_400_with_its_code(values: dict, code: str, param: str) -> None:
    with pytest.raises(BadRequest) as e:
        asr.options(values)
    assert (e.value.status, e.value.code, e.value.param) == (400, code, param)


def test_options_at_their_limits_pass_and_blanks_are_left_out() -> None:
    got = asr.options({"prompt": "x" * asr.MAX_PROMPT_CHARS, "temperature": "1", "language": ""})
    assert (len(got.prompt or ""), got.temperature, got.language) == (asr.MAX_PROMPT_CHARS, 1.0, None)
    assert asr.options({"prompt": "", "temperature": ""}) == asr.TranscriptionOptions()


def _service() -> FastAPI:
    """Answers with what its form model read, as a transcript's text."""
    app = FastAPI()

    async def answer(task: str, file: UploadFile, form: asr.TranscriptionForm) -> dict[str, Any]:
        read = {"file": (await file.read()).decode(), **form.model_dump()}
        return asr.TranscriptionResponse(
            model=form.model, task=task, text=repr(read), language=form.language, duration=1.0, segments=[],
            words=[] if form.word_timestamps else None,
            audio=asr.AudioInfo(container="wav", codec="pcm_s16le", sample_rate=16000, channels=1, peak_dbfs=None,
                                silent=True),
            timings=asr.Timings(decode_ms=0.0, inference_ms=0.0)).model_dump()

    @app.post("/v1/transcriptions")
    async def transcriptions(file: Annotated[UploadFile, File()], form: Annotated[asr.TranscriptionForm, Form()]) -> Any:
        return await answer("transcribe", file, form)

    @app.post("/v1/translations")
    async def translations(file: Annotated[UploadFile, File()], form: Annotated[asr.TranscriptionForm, Form()]) -> Any:
        return await answer("translate", file, form)

    return app


class ServiceUpstream:
    """An ``Upstream`` whose ``request`` reaches the stand-in service in-process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.calls.append((method, path, kwargs))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://asr-svc") as c:
            r = await c.request(method, path, content=kwargs["data"], headers={"content-type": kwargs["content_type"]})
        assert r.status_code == 200, r.text
        return r.json()


async def test_the_service_form_reads_every_option_transcribe_sends() -> None:
    upstream = ServiceUpstream(_service())
    options = asr.options({"language": "German", "prompt": 'Names: "Müller", Groß.', "temperature": "0.2",
                           "condition_on_previous_text": "true", "vad_filter": "false", "drop_repeats": ""})
    got = await asr.transcribe(upstream, model="tiny", audio=b"RIFF...", options=options, task="translate",
                               word_timestamps=True, timeout_s=5, request_id="r1")
    assert isinstance(got, asr.TranscriptionResponse) and got.task == "translate" and got.words == []
    assert got.text == repr({"file": "RIFF...", "model": "tiny", "language": "de", "prompt": 'Names: "Müller", Groß.',
                             "temperature": 0.2, "word_timestamps": True, "condition_on_previous_text": True,
                             "vad_filter": False, "drop_repeats": None})
    method, path, kwargs = upstream.calls[0]
    assert (method, path, kwargs["timeout_s"], kwargs["request_id"]) == ("POST", "/v1/translations", 5, "r1")


async def test_options_left_out_are_not_sent() -> None:
    upstream = ServiceUpstream(_service())
    got = await asr.transcribe(upstream, model="tiny", audio=b"x", options=asr.TranscriptionOptions(), timeout_s=5)
    assert got.task == "transcribe" and got.words is None
    assert got.text == repr({"file": "x", "model": "tiny", "language": None, "prompt": None, "temperature": None,
                             "word_timestamps": False, "condition_on_previous_text": None, "vad_filter": None,
                             "drop_repeats": None})
    assert b'name="language"' not in upstream.calls[0][2]["data"]


async def test_an_answer_that_does_not_fit_the_contract_is_502() -> None:
    class Odd:
        async def request(self, method: str, path: str, **kwargs: Any) -> Any:
            return {"text": "hello"}

    with pytest.raises(UpstreamError) as e:
        await asr.transcribe(Odd(), model="tiny", audio=b"x", options=asr.TranscriptionOptions(), timeout_s=5)
    assert (e.value.status, e.value.code) == (502, "bad_upstream_response")
