"""The caption family's contract: the options' limits, and the one upstream call — the form it sends is the one
the service's route reads back (a FastAPI route declared as caption-svc declares it), its answer comes back typed."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, File, Form, UploadFile

from modelhost.errors import BadRequest, UpstreamError
from modelhost.families import caption, validated

pytestmark = pytest.mark.unit

REPLY = {"object": "image.caption", "model": "cap", "caption": "a cat", "tokens": 2, "width": 4, "height": 3,
         "timings": {"decode_ms": 1.0, "inference_ms": 2.0}}


@pytest.mark.parametrize("values,expected", [
    ({}, (None, None)),
    ({"prompt": "", "max_new_tokens": ""}, (None, None)),  # a form's empty fields
    ({"prompt": "x" * caption.MAX_PROMPT_CHARS, "max_new_tokens": "512"}, ("x" * caption.MAX_PROMPT_CHARS, 512)),
    ({"max_new_tokens": 1}, (None, 1)),
])
def test_options_within_their_limits(values: dict, expected: tuple) -> None:
    options = validated(caption.CaptionOptions, values)
    assert (options.prompt, options.max_new_tokens) == expected


@pytest.mark.parametrize("values,param", [
    ({"prompt": "x" * (caption.MAX_PROMPT_CHARS + 1)}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": "513"}, "max_new_tokens"),
    ({"max_new_tokens": "many"}, "max_new_tokens"),
])
def test_options_out_of_their_limits_are_400_naming_the_field(values: dict, param: str) -> None:
    with pytest.raises(BadRequest) as e:
        validated(caption.CaptionOptions, values)
    assert e.value.status == 400 and e.value.param == param


class CaptionService:
    """A stand-in for caption-svc's route: reads the form as the service does, answers ``reply``."""

    def __init__(self, reply: Any) -> None:
        self.received: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        app = FastAPI()

        @app.post(caption.PATH)
        async def route(form: Annotated[caption.CaptionForm, Form()], file: UploadFile = File(...)) -> Any:
            self.received = {"form": form, "file": await file.read()}
            return reply

        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")

    async def request(self, method: str, path: str, *, data: bytes, content_type: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        r = await self.client.request(method, path, content=data, headers={"content-type": content_type})
        assert r.status_code == 200, r.text
        return r.json()


async def test_caption_sends_the_form_the_service_reads_and_returns_the_typed_answer() -> None:
    svc = CaptionService(REPLY)
    options = validated(caption.CaptionOptions, {"prompt": "What is this?", "max_new_tokens": "7"})
    reply = await caption.caption(svc, "cap", b"\x89PNG bytes", options, timeout_s=12, request_id="rid-1")
    assert isinstance(reply, caption.CaptionResponse) and reply.caption == "a cat" and reply.timings.decode_ms == 1.0
    assert svc.received["form"] == caption.CaptionForm(model="cap", prompt="What is this?", max_new_tokens=7)
    assert svc.received["file"] == b"\x89PNG bytes"
    assert svc.calls == [{"timeout_s": 12, "request_id": "rid-1"}]


async def test_options_left_out_are_not_sent() -> None:
    svc = CaptionService(REPLY)
    await caption.caption(svc, "cap", b"img", caption.CaptionOptions(), timeout_s=1)
    assert svc.received["form"] == caption.CaptionForm(model="cap")


async def test_an_answer_that_does_not_fit_the_contract_is_502() -> None:
    with pytest.raises(UpstreamError) as e:
        await caption.caption(CaptionService({"caption": "no tokens, no size"}), "cap", b"img", caption.CaptionOptions(),
                              timeout_s=1)
    assert e.value.status == 502 and e.value.code == "bad_upstream_response"
