"""The image routes (faces and captions) of the whole gateway in-process, with their services down: every bad
input gets its 4xx, naming the field, before any service is asked; the OpenAPI document shows each body, as a
form and as JSON, generated from the family's models, and the 4xx answers each route gives."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
from PIL import Image

from gateway.config import CoordinatorSettings, GatewaySettings
from gateway.main import create_app
from gateway.routers import captions, faces
from tests.doubles.fake_nvml import FakeNvml
from tests.procs import free_port

pytestmark = pytest.mark.app

CATALOG = """\
defaults: {device: cpu}
models:
  - {id: face-a, family: face, backend: insightface, source: ./nowhere-f, memory_estimate_mb: 64}
  - {id: cap-a, family: caption, backend: blip, source: ./nowhere-c, memory_estimate_mb: 64}
"""


def png(size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
async def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: a request that got through would be 503
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"face": down, "caption": down},
                               max_image_pixels=1_000_000)
    app = create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", memory_budget_mb={"cpu": 1024},
                                                   reconcile_interval_s=None))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
            yield c


D, E, V, C = "/v1/faces/detect", "/v1/faces/embed", "/v1/faces/verify", "/v1/images/captions"
PAIR = [("file_a", ("a.png", png())), ("file_b", ("b.png", png()))]

BAD_INPUTS = [
    # (name, path, request kwargs, status, code, param)
    ("embed flag not a boolean", D, dict(files={"file": ("a.png", png())}, data={"embed": "maybe"}), 400, "bad_request", "embed"),
    ("crops flag a number in JSON", D, dict(json={"image": b64(png()), "crops": 2}), 400, "bad_request", "crops"),
    ("max_faces zero", D, dict(files={"file": ("a.png", png())}, data={"max_faces": "0"}), 400, "bad_request", "max_faces"),
    ("max_faces over any service's", D, dict(json={"image": b64(png()), "max_faces": 5000}), 400, "bad_request", "max_faces"),
    ("model not a string", D, dict(json={"image": b64(png()), "model": 5}), 400, "bad_request", "model"),
    ("unknown model", D, dict(files={"file": ("a.png", png())}, data={"model": "nope"}), 404, "model_not_found", "model"),
    ("a caption model", D, dict(files={"file": ("a.png", png())}, data={"model": "cap-a"}), 404, "model_not_found", "model"),
    ("embed without crops", E, dict(json={"images": []}), 400, "bad_request", "images"),
    ("embed with a text crop", E, dict(files=[("file", ("c.png", png())), ("file", ("d.txt", b"text"))]), 415,
     "unsupported_media_type", "file[1]"),
    ("embed with bad base64", E, dict(json={"images": [b64(png()), "***"]}), 400, "invalid_base64", "images[1]"),
    ("verify without file_b", V, dict(files={"file_a": ("a.png", png())}), 400, "missing_file", "file_b"),
    ("verify box not four numbers", V, dict(files=PAIR, data={"box_a": "1,2,3"}), 400, "invalid_box", "box_a"),
    ("verify box as three form fields", V, dict(files=PAIR, data={"box_a": ["1", "2", "3"]}), 400, "invalid_box", "box_a"),
    ("verify box upside down", V, dict(json={"image_a": b64(png()), "image_b": b64(png()), "box_b": [10, 10, 5, 5]}),
     400, "invalid_box", "box_b"),
    ("verify image over the pixel limit", V, dict(files=[PAIR[0], ("file_b", ("b.png", png((1100, 1000))))]), 413,
     "too_many_pixels", "file_b"),
    ("caption prompt too long", C, dict(files={"file": ("a.png", png())}, data={"prompt": "x" * 2001}), 400,
     "bad_request", "prompt"),
    ("caption max_new_tokens out of range", C, dict(json={"image": b64(png()), "max_new_tokens": 513}), 400,
     "bad_request", "max_new_tokens"),
    ("caption without an image", C, dict(json={"prompt": "hi"}), 400, "missing_image", "image"),
    ("caption of text", C, dict(files={"file": ("a.txt", b"text")}), 415, "unsupported_media_type", "file"),
]


@pytest.mark.parametrize("name,path,kwargs,status,code,param", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_bad_input_is_its_4xx_before_any_service_is_asked(gw: httpx.AsyncClient, name: str, path: str,
                                                                kwargs: dict, status: int, code: str, param: str) -> None:
    r = await gw.post(path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "gateway" and (body["error"]["code"], body["error"]["param"]) == (code, param)


async def test_a_good_request_reaches_for_its_service(gw: httpx.AsyncClient) -> None:
    r = await gw.post(V, json={"image_a": b64(png()), "image_b": b64(png()), "box_a": "1,2,30,20"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable", r.text


ROUTES = [
    (C, captions.CaptionUpload, captions.CaptionJSON),
    (D, faces.DetectUpload, faces.DetectJSON),
    (E, faces.EmbedUpload, faces.EmbedJSON),
    (V, faces.VerifyUpload, faces.VerifyJSON),
]


def documented(schema: Any) -> Any:
    """A schema as the OpenAPI document shows it: FastAPI leaves out null values (``default: None``)."""
    if isinstance(schema, dict):
        return {k: documented(v) for k, v in schema.items() if v is not None}
    return [documented(v) for v in schema] if isinstance(schema, list) else schema


@pytest.mark.parametrize("path,form,json_body", ROUTES, ids=[r[0] for r in ROUTES])
async def test_openapi_shows_both_bodies_from_the_models_and_every_4xx(gw: httpx.AsyncClient, path: str,
                                                                      form: Any, json_body: Any) -> None:
    op = (await gw.get("/openapi.json")).json()["paths"][path]["post"]
    content = op["requestBody"]["content"]
    assert op["requestBody"]["required"] is True
    assert content["multipart/form-data"]["schema"] == documented(form.model_json_schema())
    assert content["application/json"]["schema"] == documented(json_body.model_json_schema())
    errors = {s for s in op["responses"] if s.startswith("4")}
    assert errors == {"400", "401", "404", "413", "415", "429"}
    for status in errors | {"502", "503", "504"}:
        schema = op["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}
