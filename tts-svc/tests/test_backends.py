"""The TTS backends on the tiny models (tools/make_tiny_tts_models.py) and the voices that ship with flite
and espeakng-loader, on CPU. Everything is real: Piper's phonemizer and onnxruntime, Coqui's VITS, the
flite binary, the espeak-ng library. The tiny models' sound is tones or noise; what is checked is the
contract the worker and the stream rely on. Real speech is checked by the flite → pocketsphinx round trip
(tests/test_tts_asr_roundtrip_proc.py)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog
from tests.doubles.file_server import serve_folder
from tts_svc.backends import BACKENDS
from tts_svc.items import SpeechAudio, SpeechItem
from tts_svc.voices import voices_for

pytestmark = pytest.mark.model

TTS_MODELS = ["tiny-piper", "tiny-vits", "flite", "espeak-ng"]
VOICE = {"tiny-piper": "tiny", "tiny-vits": "tiny", "flite": "slt", "espeak-ng": "en-us"}  # one voice of each

ODD_INPUTS = ["12345 and 3.14 and 1,000,000.", "Ünïcödé café, naïve façade.", "😀 🎉 emoji here", "Привет мир.",
              "你好世界。", "a", "Mr. O'Neil-Smith (aka \"Bob\") & co.; 50% off!"]


@pytest.fixture(scope="module", params=TTS_MODELS)
def loaded(request: pytest.FixtureRequest, tts_catalog: Catalog, tmp_path_factory: pytest.TempPathFactory):
    spec = tts_catalog.get(request.param)
    backend: Backend = import_backend(BACKENDS[spec.backend])(spec, str(tmp_path_factory.mktemp("cache")))
    device = backend.load()
    backend.warmup()
    yield spec, backend, device
    backend.close()


def test_load_reports_cpu_and_warmup_passes(loaded) -> None:  # noqa: ANN001
    _, _, device = loaded
    assert device == "cpu"


def test_one_audio_per_item_in_order_at_the_models_rate(loaded) -> None:  # noqa: ANN001
    spec, backend, _ = loaded
    texts = ["Hello world.", "This is a somewhat longer second sentence, with a clause.", "Bye."]
    results = backend.infer([SpeechItem(text=t, voice=VOICE[spec.id]) for t in texts])
    assert len(results) == 3 and all(isinstance(r, SpeechAudio) for r in results)
    rates = {r.sample_rate for r in results}
    assert len(rates) == 1 and rates.pop() in (8000, 16000, 22050, 24000)
    assert all(len(r.pcm) % 2 == 0 and r.duration_s > 0.05 for r in results)
    # order: the long sentence is the longest audio
    assert results[1].duration_s > max(results[0].duration_s, results[2].duration_s)


def test_speed_changes_the_duration_natively(loaded) -> None:  # noqa: ANN001
    spec, backend, _ = loaded
    text = "The quick brown fox jumps over the lazy dog."
    slow, normal, fast = (backend.infer([SpeechItem(text=text, voice=VOICE[spec.id], speed=s)])[0].duration_s
                          for s in (0.5, 1.0, 2.0))
    assert slow > normal > fast
    if spec.backend != "coqui":  # VITS rounds each symbol's duration up: not proportional on a tiny model
        assert 1.6 < slow / normal < 2.4 and 1.6 < normal / fast < 2.4


def test_extreme_speeds_stay_in_bounds(loaded) -> None:  # noqa: ANN001
    spec, backend, _ = loaded
    text = "Speed limits are tested here."
    slowest, fastest = (backend.infer([SpeechItem(text=text, voice=VOICE[spec.id], speed=s)])[0] for s in (0.25, 4.0))
    assert slowest.duration_s > fastest.duration_s > 0


@pytest.mark.parametrize("text", ODD_INPUTS)
def test_numbers_unicode_emoji_and_symbols_never_crash(loaded, text: str) -> None:  # noqa: ANN001
    spec, backend, _ = loaded
    [audio] = backend.infer([SpeechItem(text=text, voice=VOICE[spec.id])])
    assert isinstance(audio.pcm, bytes) and len(audio.pcm) % 2 == 0  # may be empty: nothing it can pronounce


def test_an_unknown_voice_fails_the_item(loaded) -> None:  # noqa: ANN001
    _, backend, _ = loaded
    with pytest.raises(ValueError):
        backend.infer([SpeechItem(text="Hello.", voice="no-such-voice")])


def test_every_listed_voice_speaks(loaded, tmp_path_factory: pytest.TempPathFactory) -> None:  # noqa: ANN001
    spec, backend, _ = loaded
    voices = [v.id for v in voices_for(spec)]
    assert VOICE[spec.id] in voices
    sample = voices if len(voices) <= 8 else ["en-us", "de", "fr", "es", "cmn", "ru", "ar", "hi"]
    for voice in sample:
        [audio] = backend.infer([SpeechItem(text="Hello, one two three.", voice=voice)])
        assert audio.duration_s > 0.1, voice


def test_flite_lists_its_compiled_voices_and_espeak_its_languages(tts_catalog: Catalog) -> None:
    flite = {v.id for v in voices_for(tts_catalog.get("flite"))}
    assert {"slt", "rms", "awb", "kal16"} <= flite and "awb_time" not in flite
    espeak = {v.id: v for v in voices_for(tts_catalog.get("espeak-ng"))}
    assert len(espeak) > 100 and {"en-us", "de", "fr", "cmn"} <= set(espeak)
    assert espeak["en-us"].language == "en-us" and espeak["de"].name == "German"


def test_a_piper_voice_not_yet_downloaded_lists_the_catalog_voice(tts_catalog: Catalog) -> None:
    spec = tts_catalog.get("tiny-piper").model_copy(update={"source": "en_US-lessac-medium", "options": {"voice": "lessac"}})
    assert [v.id for v in voices_for(spec, cache_dir="/nonexistent")] == ["lessac"]


def test_a_pulled_piper_voice_loads_without_the_network(tts_catalog: Catalog, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull (modelhost's Pulls, kind url) fetches a voice id's two files from the hub's voice repository
    (HF_ENDPOINT: here a file server on loopback) into ``<cache>/piper``, where the load looks; the load's own
    fallback download fetches the same URLs the same way. piper's own download_voices names the same URLs."""
    from modelhost import pull_urls
    from modelhost.pulls import Pulls
    from piper.download_voices import URL_FORMAT

    voice = "en_US-tiny-medium"
    urls = [f.url for f in pull_urls.piper_voice_files(voice, "https://huggingface.co", tmp_path)]
    assert urls == [URL_FORMAT.format(lang_family="en", lang_code="en_US", voice_name="tiny", voice_quality="medium",
                                      extension=ext).removesuffix("?download=true") for ext in (".onnx.json", ".onnx")]
    tiny = Path(tts_catalog.get("tiny-piper").source)
    folder = tmp_path / "www" / "rhasspy" / "piper-voices" / "resolve" / "main" / "en" / "en_US" / "tiny" / "medium"
    folder.mkdir(parents=True)
    shutil.copy(tiny, folder / f"{voice}.onnx")
    shutil.copy(f"{tiny}.json", folder / f"{voice}.onnx.json")
    spec = tts_catalog.get("tiny-piper").model_copy(update={"id": "pulled-voice", "source": voice})

    async def pull() -> Any:
        pulls = Pulls([spec], tmp_path / "cache", offline=False)
        await pulls.start(spec.id)
        return await pulls.wait(spec.id)

    with serve_folder(tmp_path / "www") as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        own = import_backend(BACKENDS["piper"])(spec, str(tmp_path / "loaded"))  # no pull: the load downloads
        assert own.load() == "cpu"
        own.close()
        assert sorted(p.name for p in (tmp_path / "loaded" / "piper").iterdir()) == [f"{voice}.onnx", f"{voice}.onnx.json"]
        s = asyncio.run(pull())
    requests = server.requests
    size = tiny.stat().st_size + Path(f"{tiny}.json").stat().st_size
    assert s.state == "done" and s.kind == "url" and s.bytes_done == s.bytes_total == size, s
    assert s.cached is True and s.size_on_disk_bytes == size and len(requests) == 4
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone, and the load may not fetch anything
    b = import_backend(BACKENDS["piper"])(spec, str(tmp_path / "cache"))
    assert b.load() == "cpu"
    b.warmup()
    b.close()
    assert not [p for p in (tmp_path / "cache" / "piper").iterdir() if p.name.startswith(".")]
