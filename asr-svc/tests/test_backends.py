"""The ASR backends for real, on CPU: tiny random-weight Whisper models built locally
(tools/make_tiny_asr_models.py) through openai-whisper and faster-whisper, and pocketsphinx with the en-US
model that ships in its wheel.

The tiny Whisper models have random weights, except that their decoder always points at one word, so every
30 s window decodes to "hello hello ..." whatever it hears: what is checked for them is the contract the
worker relies on (one result per item, the keys and types, times inside the audio, words when asked).
pocketsphinx is a real recogniser: on speech from flite it must get the words right.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from asr_svc.backends import BACKENDS, capabilities
from asr_svc.backends.faster_whisper import compute_type_for
from asr_svc.items import TranscribeItem
from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog, ModelSpec
from tests.doubles.file_server import serve_folder

pytestmark = pytest.mark.model

WHISPERS = ["tiny-whisper", "tiny-faster-whisper"]
SEGMENT_KEYS = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
                "no_speech_prob"}


def _backend(spec: ModelSpec) -> Backend:
    return import_backend(BACKENDS[spec.backend])(spec, cache_dir="/nonexistent-cache")


@pytest.fixture(scope="module", params=WHISPERS + ["pocketsphinx-en-us"])
def loaded(request: pytest.FixtureRequest, tiny_catalog: Catalog):
    """One loaded and warmed-up backend per model, shared by the tests of this module."""
    backend = _backend(tiny_catalog.get(request.param))
    device = backend.load()
    backend.warmup()
    yield backend, device
    backend.close()


@pytest.fixture(scope="module")
def pocketsphinx(tiny_catalog: Catalog):
    backend = _backend(tiny_catalog.get("pocketsphinx-en-us"))
    backend.load()
    yield backend
    backend.close()


def assert_transcript(result: dict[str, Any], duration_s: float, *, words: bool) -> None:
    assert set(result) == {"text", "language", "duration", "segments", "words"}
    assert isinstance(result["text"], str)
    assert isinstance(result["language"], str) and result["language"]
    assert result["duration"] == pytest.approx(duration_s, abs=0.001)
    for i, s in enumerate(result["segments"]):
        assert set(s) == SEGMENT_KEYS and s["id"] == i
        assert 0.0 <= s["start"] <= s["end"] <= duration_s + 0.001
        assert isinstance(s["text"], str) and s["text"].strip()
        assert all(isinstance(t, int) for t in s["tokens"])
    if words:
        assert isinstance(result["words"], list)
        for w in result["words"]:
            assert set(w) == {"word", "start", "end", "probability"}
            assert 0.0 <= w["start"] <= w["end"] <= duration_s + 0.001 and 0.0 <= w["probability"] <= 1.0
    else:
        assert result["words"] is None


def test_load_reports_cpu_and_warmup_passes(loaded) -> None:
    _, device = loaded
    assert device == "cpu"


def test_batch_returns_one_transcript_per_item_with_words_when_asked(loaded, kit, speech, sentences) -> None:
    backend, _ = loaded
    fox = kit.pcm16(speech(sentences[2]))
    beep = (kit.tone(1.5)[0] * 32767).astype(np.int16)
    items = [TranscribeItem(audio=fox, language="en", word_timestamps=True), TranscribeItem(audio=beep, language="en")]
    results = backend.infer(items)
    assert len(results) == 2
    assert_transcript(results[0], len(fox) / 16000, words=True)
    assert_transcript(results[1], 1.5, words=False)
    assert results[0]["language"] == "en"


@pytest.mark.parametrize("model_id", WHISPERS)
def test_whisper_translates_and_detects_the_language(tiny_catalog: Catalog, model_id: str, kit, speech, sentences) -> None:
    backend = _backend(tiny_catalog.get(model_id))
    backend.load()
    try:
        audio = kit.pcm16(speech(sentences[0]))
        [detected, translated] = backend.infer([TranscribeItem(audio=audio), TranscribeItem(audio=audio, task="translate")])
    finally:
        backend.close()
    for result in (detected, translated):
        assert_transcript(result, len(audio) / 16000, words=False)
        assert len(result["language"]) in (2, 3)  # a code Whisper knows: random weights pick any
        assert result["text"].split()[0] == "hello"


@pytest.mark.parametrize("model_id", WHISPERS + ["pocketsphinx-en-us"])
def test_long_audio_is_transcribed_in_chunks_with_times_from_the_start(tiny_catalog: Catalog, model_id: str,
                                                                        kit, speech, sentences) -> None:
    # Four sentences with 1.5 s pauses, cut into chunks of at most 6 s: every segment and word lies inside
    # the audio, in order, and later chunks carry their offset (something is heard after the first chunk).
    # (Not words from tiny-whisper: with word timestamps, openai-whisper moves its window to the last word's
    # end, which for random weights is a few frames on, and the test would take a minute.)
    spec = tiny_catalog.get(model_id)
    spec = spec.model_copy(update={"options": {**spec.options, "chunk_s": 6.0}})
    pause = np.zeros(24000, np.int16)
    audio = np.concatenate([x for s in sentences[:4] for x in (kit.pcm16(speech(s)), pause)])
    backend = _backend(spec)
    backend.load()
    try:
        words = model_id != "tiny-whisper"
        [result] = backend.infer([TranscribeItem(audio=audio, language="en", word_timestamps=words)])
    finally:
        backend.close()
    duration = len(audio) / 16000
    assert duration > 12
    assert_transcript(result, duration, words=words)
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and starts and max(starts) > 6.0


def test_faster_whisper_batch_size_decodes_long_audio_through_the_batched_vad_pipeline(tiny_catalog: Catalog, kit,
                                                                                      speech, sentences) -> None:
    spec = tiny_catalog.get("tiny-faster-whisper")
    spec = spec.model_copy(update={"options": {**spec.options, "batch_size": 4}})
    pause = np.zeros(32000, np.int16)
    audio = np.concatenate([x for s in sentences * 2 for x in (kit.pcm16(speech(s)), pause)])
    backend = _backend(spec)
    backend.load()
    try:
        assert type(backend.batched).__name__ == "BatchedInferencePipeline"
        [result] = backend.infer([TranscribeItem(audio=audio, language="en", word_timestamps=True)])
    finally:
        backend.close()
    assert len(audio) / 16000 > 30  # long enough for the VAD (vad_filter: auto), so the batched pipeline ran
    assert_transcript(result, len(audio) / 16000, words=True)
    assert result["segments"] and result["text"].startswith("hello")


def test_pocketsphinx_transcribes_flite_speech_with_word_error_rate_at_most_one_in_ten(pocketsphinx, kit, speech, wer,
                                                                                     sentences) -> None:
    errors = []
    for sentence in sentences:
        [result] = pocketsphinx.infer([TranscribeItem(audio=kit.pcm16(speech(sentence)), language="en")])
        errors.append(wer(sentence.split(), result["text"].split()))
    assert len(sentences) >= 5
    assert sum(errors) / len(errors) <= 0.1, list(zip(sentences, errors))


def test_pocketsphinx_words_come_in_order_with_their_times(pocketsphinx, kit, speech) -> None:
    audio = kit.pcm16(speech("one two three four five"))
    [result] = pocketsphinx.infer([TranscribeItem(audio=audio, language="en", word_timestamps=True)])
    assert [w["word"] for w in result["words"]] == ["one", "two", "three", "four", "five"]
    ends = [w["end"] for w in result["words"]]
    assert ends == sorted(ends)
    assert result["segments"][0]["text"] == "one two three four five"


def test_pocketsphinx_hears_nothing_in_a_pure_tone_or_noise_floor(pocketsphinx, kit) -> None:
    hum = (kit.tone(2.0, freq=50, amplitude=0.001)[0] * 32767).astype(np.int16)
    [result] = pocketsphinx.infer([TranscribeItem(audio=hum, language="en")])
    assert result["text"] == "" and result["segments"] == []


@pytest.mark.parametrize("model_id", WHISPERS + ["pocketsphinx-en-us"])
def test_model_asked_for_cuda_reports_the_device_it_really_got(tiny_catalog: Catalog, model_id: str) -> None:
    # On a CPU-only machine the honest answer is "cpu" (the runtime then refuses the model unless the
    # catalog allows the fallback). Where a GPU is usable, the Whisper models must really be on it.
    spec = tiny_catalog.get(model_id).model_copy(update={"device": "cuda:0", "dtype": "float16"})
    backend = _backend(spec)
    device = backend.load()
    try:
        if model_id == "pocketsphinx-en-us":
            assert device == "cpu"
        elif model_id == "tiny-faster-whisper":
            import ctranslate2

            assert device == ("cuda:0" if ctranslate2.get_cuda_device_count() else "cpu")
        else:
            import torch

            assert device == ("cuda:0" if torch.cuda.is_available() else "cpu")
    finally:
        backend.close()


def test_faster_whisper_runs_the_compute_type_its_dtype_asks_for(tiny_catalog: Catalog) -> None:
    spec = tiny_catalog.get("tiny-faster-whisper")
    assert spec.dtype == "int8"
    backend = _backend(spec)
    backend.load()
    try:
        assert backend.compute_type == "int8_float32"  # CTranslate2's name for int8 weights on CPU
    finally:
        backend.close()


def test_faster_whisper_compute_type_follows_dtype_device_and_options(caplog: pytest.LogCaptureFixture) -> None:
    cpu = {"float32", "int8", "int8_float32"}
    gpu = {"float32", "float16", "bfloat16", "int8", "int8_float16", "int8_float32", "int8_bfloat16"}

    def spec(dtype: str, **options: Any) -> ModelSpec:
        return ModelSpec(id="fw", family="asr", backend="faster_whisper", source="x", dtype=dtype, options=options)

    assert compute_type_for(spec("float16"), "cuda", gpu) == "float16"
    assert compute_type_for(spec("int8"), "cuda", gpu) == "int8_float16"
    assert compute_type_for(spec("int8"), "cpu", cpu) == "int8"
    assert compute_type_for(spec("float32"), "cpu", cpu) == "float32"
    assert compute_type_for(spec("float16", compute_type="int8_float32"), "cpu", cpu) == "int8_float32"
    with caplog.at_level(logging.INFO):
        assert compute_type_for(spec("float16"), "cpu", cpu) == "int8"
    assert "compute type float16 is not supported on cpu" in caplog.text
    with pytest.raises(ValueError, match="dtype 'float64' is not supported"):
        compute_type_for(spec("float64"), "cpu", cpu)


def test_tiny_whisper_checkpoint_holds_no_uninitialised_weights(tiny_catalog: Catalog) -> None:
    # openai-whisper makes the decoder's positional embedding with torch.empty, which a real checkpoint
    # always fills: saved unfilled, it held whatever was in memory, and decoding sometimes went to NaN.
    import torch

    state = torch.load(tiny_catalog.get("tiny-whisper").source, weights_only=True)["model_state_dict"]
    for name, tensor in state.items():
        assert torch.isfinite(tensor).all(), name
        assert tensor.abs().max() < 100, name


def test_whisper_refuses_a_dtype_it_cannot_run(tiny_catalog: Catalog) -> None:
    spec = tiny_catalog.get("tiny-whisper").model_copy(update={"dtype": "int8"})
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        _backend(spec).load()


def test_pocketsphinx_source_must_be_the_package_model_or_a_directory() -> None:
    spec = ModelSpec(id="ps", family="asr", backend="pocketsphinx", source="fr-fr")
    with pytest.raises(ValueError, match="source must be 'en-us'"):
        _backend(spec).load()


def test_capabilities_english_only_models_and_pocketsphinx_do_not_translate() -> None:
    def caps(backend: str, source: str, **options: Any):  # noqa: ANN202
        return capabilities(ModelSpec(id="m", family="asr", backend=backend, source=source, options=options))

    assert caps("whisper", "large-v3").translate and "fr" in caps("whisper", "large-v3").languages
    assert caps("faster_whisper", "Systran/faster-whisper-small.en").languages == {"en"}
    assert not caps("faster_whisper", "Systran/faster-whisper-small.en").translate
    assert not caps("whisper", "/models/custom", english_only=True).translate
    assert caps("pocketsphinx", "en-us") == caps("whisper", "small.en")


def test_backend_table_imports_nothing_heavy() -> None:
    # The HTTP process imports the table, the items and the decoder; torch, whisper, CTranslate2 and
    # pocketsphinx belong to the worker process.
    code = (
        "import sys, asr_svc.backends, asr_svc.items, asr_svc.audio, asr_svc.api; "
        "heavy = sorted(m for m in ('torch', 'whisper', 'ctranslate2', 'faster_whisper', 'pocketsphinx', 'transformers') "
        "if m in sys.modules); print(','.join(heavy)); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, f"imported: {done.stdout.strip()} {done.stderr[-500:]}"


def test_a_pulled_whisper_name_loads_from_the_cache_without_the_network(tiny_catalog: Catalog, tmp_path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull of an openai-whisper name (modelhost's Pulls, kind url) fetches the file of whisper's own table,
    checks it against the sha256 its URL carries, and leaves it where ``load_model(download_root=<cache>/whisper)``
    looks: the load that follows (its server gone) reads it. Here the table's entry points at loopback."""
    import whisper
    from modelhost.pulls import Pulls

    ckpt = tiny_catalog.get("tiny-whisper").source
    payload = open(ckpt, "rb").read()
    sha = hashlib.sha256(payload).hexdigest()
    www = tmp_path / "www" / sha
    www.mkdir(parents=True)
    (www / "tiny-x.pt").write_bytes(payload)
    spec = tiny_catalog.get("tiny-whisper").model_copy(update={"id": "pulled-whisper", "source": "tiny-x"})
    cache = tmp_path / "cache"

    async def pull() -> Any:
        pulls = Pulls([spec], cache, offline=False)
        await pulls.start(spec.id)
        return await pulls.wait(spec.id)

    with serve_folder(tmp_path / "www") as server:
        monkeypatch.setitem(whisper._MODELS, "tiny-x", f"{server.url}/{sha}/tiny-x.pt")
        monkeypatch.setitem(whisper._ALIGNMENT_HEADS, "tiny-x", None)  # not a real model: no alignment heads
        s = asyncio.run(pull())
    requests = server.requests
    assert s.state == "done" and s.kind == "url" and s.bytes_done == s.bytes_total == len(payload), s
    assert s.cached is True and requests == [f"/{sha}/tiny-x.pt"]
    assert sorted(p.name for p in (cache / "whisper").iterdir()) == ["tiny-x.pt"]
    backend = import_backend(BACKENDS["whisper"])(spec, str(cache))
    assert backend.load() == "cpu"  # the server is gone: whisper found the file and its sha256 matched
    backend.close()
