"""The face family's contract: the options' limits (flags, counts, boxes), the verify threshold, and the
three upstream calls — each form they send is the one the service's route reads back (FastAPI routes declared
as face-svc declares them); a box travels as a list of four numbers from the client to the service."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, File, Form, UploadFile

from modelhost.errors import BadRequest, UpstreamError
from modelhost.families import face, validated

pytestmark = pytest.mark.unit

TIMINGS = {"decode_ms": 1.0, "inference_ms": 2.0}
FACE = {"box": [1.0, 2.0, 30.0, 40.0], "score": 0.9, "landmarks": [[5.0, 6.0]] * 5}


@pytest.mark.parametrize("values,expected", [
    ({}, (False, False, None)),
    ({"embed": "true", "crops": "1", "max_faces": "3"}, (True, True, 3)),
    ({"embed": "FALSE", "crops": "off", "max_faces": 7.0}, (False, False, 7)),
    ({"embed": True, "max_faces": ""}, (True, False, None)),
    ({"max_faces": face.MAX_FACES}, (False, False, face.MAX_FACES)),
])
def test_detect_options_read_form_strings_and_json_values(values: dict, expected: tuple) -> None:
    options = validated(face.DetectOptions, values)
    assert (options.embed, options.crops, options.max_faces) == expected


@pytest.mark.parametrize("values,param", [
    ({"embed": "maybe"}, "embed"), ({"crops": ""}, "crops"), ({"embed": 2}, "embed"), ({"embed": []}, "embed"),
    ({"max_faces": "0"}, "max_faces"), ({"max_faces": -2}, "max_faces"), ({"max_faces": "two"}, "max_faces"),
    ({"max_faces": 1.5}, "max_faces"), ({"max_faces": [1]}, "max_faces"), ({"max_faces": face.MAX_FACES + 1}, "max_faces"),
])
def test_bad_detect_options_are_400_naming_the_field(values: dict, param: str) -> None:
    with pytest.raises(BadRequest) as e:
        validated(face.DetectOptions, values)
    assert e.value.code == "bad_request" and e.value.param == param


@pytest.mark.parametrize("value,expected", [
    (None, None),
    ("", None),
    ("1,2,30,40", [1.0, 2.0, 30.0, 40.0]),
    (" 1.5, 2 ,3,4", [1.5, 2.0, 3.0, 4.0]),
    ("[52, 36, 124, 108]", [52.0, 36.0, 124.0, 108.0]),
    ([0, 0, 10.25, 10], [0.0, 0.0, 10.25, 10.0]),
    (["1", "2", "3", "4"], [1.0, 2.0, 3.0, 4.0]),  # a form field sent four times
])
def test_boxes_from_forms_and_json_are_lists_of_four_numbers(value: Any, expected: list | None) -> None:
    assert face.verify_options({"box_a": value}).box_a == expected


@pytest.mark.parametrize("value", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "5,2,3,4", "1,4,3,4", "nan,1,2,3", "1,1,inf,5",
                                   "[1, 2", [1, 2, 3], [True, 0, 2, 2], {"x": 1}, 5])
def test_bad_boxes_are_400_invalid_box(value: Any) -> None:
    with pytest.raises(BadRequest) as e:
        face.verify_options({"box_a": [0, 0, 1, 1], "box_b": value})
    assert e.value.code == "invalid_box" and e.value.param == "box_b"


@pytest.mark.parametrize("backend,options,expected", [
    ("insightface", {}, 0.4), ("dlib", {}, 0.92), ("yunet_sface", {}, 0.363),
    ("yunet_sface", {"verify_threshold": 0.3}, 0.3), ("dlib", {"verify_threshold": "0.5"}, 0.5), ("other", {}, 0.5),
])
def test_verify_threshold_is_the_catalogs_else_the_backends(backend: str, options: dict, expected: float) -> None:
    assert face.verify_threshold(backend, options) == expected


class FaceService:
    """A stand-in for face-svc's routes: reads each form as the service does, answers the canned reply."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.received: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        app = FastAPI()

        @app.post("/v1/faces/detect")
        async def detect(form: Annotated[face.DetectForm, Form()], file: UploadFile = File(...)) -> Any:
            self.received = {"form": form, "options": validated(face.DetectOptions, form.model_dump(exclude={"model"})),
                             "files": [await file.read()]}
            return replies["detect"]

        @app.post("/v1/faces/embed")
        async def embed(form: Annotated[face.EmbedForm, Form()], file: list[UploadFile] = File(...)) -> Any:
            self.received = {"form": form, "files": [await f.read() for f in file]}
            return replies["embed"]

        @app.post("/v1/faces/verify")
        async def verify(form: Annotated[face.VerifyForm, Form()], file_a: UploadFile = File(...),
                         file_b: UploadFile = File(...)) -> Any:
            self.received = {"form": form, "options": face.verify_options(form.model_dump(exclude={"model"})),
                             "files": [await file_a.read(), await file_b.read()]}
            return replies["verify"]

        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")

    async def request(self, method: str, path: str, *, data: bytes, content_type: str, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        r = await self.client.request(method, path, content=data, headers={"content-type": content_type})
        assert r.status_code == 200, r.text
        return r.json()


REPLIES = {
    "detect": {"model": "m", "faces": [{**FACE, "embedding": [0.6, 0.8]}], "found": 1, "truncated": False,
               "width": 64, "height": 48, "recognition_batch": 1, "timings": TIMINGS},
    "embed": {"model": "m", "data": [{"index": 0, "embedding": [1.0, 0.0]}, {"index": 1, "embedding": [0.0, 1.0]}],
              "dim": 2, "recognition_batch": 2, "timings": TIMINGS},
    "verify": {"model": "m", "similarity": 0.95, "threshold": 0.4, "verdict": "same", "face_a": FACE, "face_b": FACE,
               "timings": TIMINGS},
}


async def test_detect_sends_its_options_and_returns_the_typed_detection() -> None:
    svc = FaceService(REPLIES)
    options = validated(face.DetectOptions, {"embed": "true", "max_faces": "2"})
    reply = await face.detect(svc, "m", b"image", options, timeout_s=9, request_id="rid-1")
    assert isinstance(reply, face.FaceDetection) and reply.faces[0].embedding == [0.6, 0.8] and reply.faces[0].crop is None
    assert svc.received["form"] == face.DetectForm(model="m", embed=True, crops=False, max_faces=2)
    assert svc.received["options"] == options and svc.received["files"] == [b"image"]
    assert svc.calls == [{"timeout_s": 9, "request_id": "rid-1"}]


async def test_embed_sends_every_crop_in_order() -> None:
    svc = FaceService(REPLIES)
    reply = await face.embed(svc, "m", [b"crop0", b"crop1"], timeout_s=9)
    assert isinstance(reply, face.FaceEmbeddings) and [e.index for e in reply.data] == [0, 1]
    assert svc.received["form"] == face.EmbedForm(model="m") and svc.received["files"] == [b"crop0", b"crop1"]


async def test_verify_boxes_arrive_at_the_service_as_the_lists_the_client_sent() -> None:
    svc = FaceService(REPLIES)
    options = face.verify_options({"box_a": "200,120,264.5,184"})
    reply = await face.verify(svc, "m", b"a", b"b", options, timeout_s=9)
    assert isinstance(reply, face.FaceVerification) and reply.verdict == "same"
    assert svc.received["form"].box_a == "[200.0, 120.0, 264.5, 184.0]" and svc.received["form"].box_b is None
    assert svc.received["options"] == face.VerifyOptions(box_a=[200.0, 120.0, 264.5, 184.0])
    assert svc.received["files"] == [b"a", b"b"]


async def test_an_answer_that_does_not_fit_the_contract_is_502() -> None:
    svc = FaceService({"detect": {**REPLIES["detect"], "faces": [{"box": "somewhere"}]}})
    with pytest.raises(UpstreamError) as e:
        await face.detect(svc, "m", b"image", face.DetectOptions(), timeout_s=1)
    assert e.value.status == 502 and e.value.code == "bad_upstream_response"
