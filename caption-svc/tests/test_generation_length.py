"""Generation length against each model's context, through HTTP: create_app with the real worker and all
three tiny random-weight models on CPU.

The API takes ``max_new_tokens`` up to 512 and prompts up to 2000 characters; the tiny BLIP's text decoder
has 64 positions and BLIP-2's 128 (the released BLIP's 512), so a valid request can ask for more than a
model holds. It must be a caption of what fits, never a 500; a prompt that alone fills the context is a 400
``prompt_too_long`` found before generating, and harms neither the worker nor the model.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from caption_svc.config import CaptionSettings
from caption_svc.main import create_app

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
TINY_MODELS = ["tiny-blip", "tiny-blip2", "tiny-qwen25vl"]
LONGEST_PROMPT = "a " * 999  # 1998 characters, inside the API's 2000: some 1000 tokens


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_models.py"), str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    settings = CaptionSettings(catalog=out / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings)) as c:
        for model in TINY_MODELS:
            r = c.post(f"/v1/models/{model}/load")
            assert r.status_code == 200, r.text
        yield c


def _png() -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((64, 48)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def caption(client: TestClient, model: str, **form: Any):
    return client.post("/v1/captions", data={"model": model, **form}, files={"file": ("image.png", _png(), "image/png")})


@pytest.mark.parametrize("prompt", [None, "a picture of"], ids=["no-prompt", "prompt"])
@pytest.mark.parametrize("model", TINY_MODELS)
def test_max_new_tokens_at_the_public_limit_is_a_caption(client: TestClient, model: str, prompt: str | None) -> None:
    form = {"max_new_tokens": "512"} | ({"prompt": prompt} if prompt is not None else {})
    r = caption(client, model, **form)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == model and body["caption"].strip()
    assert 1 <= body["tokens"] <= 512


@pytest.mark.parametrize("model", ["tiny-blip", "tiny-blip2"])
def test_prompt_that_fills_the_context_is_400_prompt_too_long(client: TestClient, model: str) -> None:
    pid = client.get("/v1/models").json()["worker_pid"]
    r = caption(client, model, prompt=LONGEST_PROMPT, max_new_tokens="8")
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["src"] == "caption-svc"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "prompt_too_long"
    assert body["error"]["param"] == "prompt"
    assert model in body["error"]["message"] and "shorten" in body["error"]["message"]
    listing = client.get("/v1/models").json()
    assert listing["worker_pid"] == pid
    assert [m["state"] for m in listing["data"] if m["id"] == model] == ["ready"]
    ok = caption(client, model, max_new_tokens="512")
    assert ok.status_code == 200, ok.text


def test_qwen_takes_the_longest_prompt_with_the_most_new_tokens(client: TestClient) -> None:
    # Rotary positions: no table to run off, and the released models' context holds far more.
    r = caption(client, "tiny-qwen25vl", prompt=LONGEST_PROMPT, max_new_tokens="512")
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["tokens"] <= 512
