"""OpenAI's voice names, and a model whose system program is missing, through the real gateway and the real
tts-svc on loopback. The official ``openai`` client is the client.

The catalog is the tiny TTS catalog that ``make dev`` uses (tools/make_tiny_tts_models.py), every model in it
as it is, plus flite with its own ``voice_aliases`` and a flite whose binary does not exist (as on a machine
where ``apt-get install flite`` was never run)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import yaml

from modelhost.families.tts import OPENAI_VOICES
from tests import procs
from tests.tts_fixtures import decode, tts_catalog  # noqa: F401

pytestmark = pytest.mark.proc

DECLARED = {"alloy": "rms", "echo": "awb"}  # flite-aliased's catalog mapping


@pytest.fixture(scope="module")
def catalog(tts_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    raw = yaml.safe_load(tts_catalog.read_text())
    flite = next(m for m in raw["models"] if m["backend"] == "flite")
    raw["models"] += [
        {**flite, "id": "flite-aliased", "options": {**(flite.get("options") or {}), "voice_aliases": DECLARED}},
        {**flite, "id": "flite-missing", "source": "/nonexistent/bin/flite"},
    ]
    for m in raw["models"]:  # relative sources stay where the tiny models are
        src = Path(tts_catalog.parent, m["source"])
        if m["source"].startswith("./") and src.exists():
            m["source"] = str(src)
    return raw


@pytest.fixture(scope="module")
def stack(catalog: dict, logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    path = tmp_path_factory.mktemp("voices-catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    svc = procs.start_tts_svc(path, logdir)
    try:
        gw = procs.start_gateway(path, {"tts": svc.url}, logdir, name="voices-gateway")
    except Exception:
        svc.stop()
        raise
    yield gw
    gw.stop()
    svc.stop()


@pytest.fixture(scope="module")
def client(stack: procs.Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused-without-GATEWAY_API_KEYS", max_retries=0, timeout=120)


def voices(stack: procs.Proc) -> dict[str, dict]:
    r = httpx.get(stack.url + "/v1/audio/voices", timeout=30)
    assert r.status_code == 200, r.text
    return {m["model"]: m for m in r.json()["data"]}


def test_the_openai_client_speaks_with_alloy_on_every_tts_model_of_the_dev_catalog(
        client: openai.OpenAI, tts_catalog: Path) -> None:  # noqa: F811
    models = [m["id"] for m in yaml.safe_load(tts_catalog.read_text())["models"] if m["family"] == "tts"]
    assert len(models) >= 4  # tiny Piper, tiny VITS, flite, espeak-ng (and what the builder adds)
    for model in models:
        r = client.audio.speech.create(model=model, voice="alloy", input="Hello there.", response_format="wav")
        assert r.response.headers["content-type"] == "audio/wav", model
        x, rate = decode(r.content)
        assert len(x) > 0.2 * rate, model


def test_every_model_lists_each_openai_name_as_one_of_its_voices(stack: procs.Proc) -> None:
    listed = voices(stack)
    for model, entry in listed.items():
        if model == "flite-missing":
            continue
        ids = {v["id"] for v in entry["voices"]}
        assert set(entry["aliases"]) == set(OPENAI_VOICES), model
        assert set(entry["aliases"].values()) <= ids, model
    # Spread over the voices in their order, round again when there are fewer; English on a model of many languages.
    flite = listed["flite"]
    order = [v["id"] for v in flite["voices"]]
    assert [flite["aliases"][n] for n in OPENAI_VOICES] == [order[i % len(order)] for i in range(len(OPENAI_VOICES))]
    assert all(v.startswith("en") for v in listed["espeak-ng"]["aliases"].values())
    # The catalog's voice_aliases win where they name a voice; the rest are spread as without them.
    aliased = listed["flite-aliased"]["aliases"]
    assert {n: aliased[n] for n in DECLARED} == DECLARED
    assert {n: v for n, v in aliased.items() if n not in DECLARED} == \
           {n: v for n, v in flite["aliases"].items() if n not in DECLARED}


def test_an_alias_speaks_with_the_voice_it_names(client: openai.OpenAI) -> None:
    def speak(model: str, voice: str) -> bytes:
        return client.audio.speech.create(model=model, voice=voice, input="Same words.", response_format="wav").content

    assert speak("flite-aliased", "alloy") == speak("flite-aliased", "rms")  # flite is deterministic
    assert speak("flite-aliased", "alloy") != speak("flite-aliased", "slt")


def test_an_unknown_voice_names_the_voices_and_the_aliases(stack: procs.Proc) -> None:
    r = httpx.post(stack.url + "/v1/audio/speech", json={"model": "flite", "voice": "nobody", "input": "Hi."}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "voice_not_found", r.text
    message = r.json()["error"]["message"]
    assert "slt" in message and "alloy" in message


def test_a_model_whose_program_is_missing_is_unavailable_with_the_reason(stack: procs.Proc) -> None:
    rows = {m["id"]: m for m in httpx.get(stack.url + "/admin/models", timeout=30).json()["data"]}
    assert rows["flite-missing"]["state"] == "unavailable"
    assert "apt-get install flite" in rows["flite-missing"]["reason"]
    assert rows["flite"]["state"] != "unavailable"

    entry = voices(stack)["flite-missing"]
    assert entry["voices"] == [] and "apt-get install flite" in entry["reason"]

    # A load is refused at once with the reason, not tried; speech never says "its voices: " with nothing after.
    load = httpx.post(stack.url + "/admin/models/flite-missing/load", timeout=30)
    speech = httpx.post(stack.url + "/v1/audio/speech", json={"model": "flite-missing", "input": "Hi."}, timeout=30)
    for r in (load, speech):
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "model_unavailable" and "apt-get install flite" in error["message"], r.text
        assert "Retry-After" in r.headers
    rows = {m["id"]: m for m in httpx.get(stack.url + "/admin/models", timeout=30).json()["data"]}
    assert rows["flite-missing"]["state"] == "unavailable"  # not failed: nothing was tried
