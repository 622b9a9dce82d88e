"""Whisper's repetition failure and the options against it: which segments ``drop_repeats`` takes out, and
how a request's options override the catalog's defaults in the faster-whisper backend (no model loaded)."""

from __future__ import annotations

import numpy as np
import pytest

from asr_svc.backends.faster_whisper import FasterWhisperTranscriber
from asr_svc.items import TranscribeItem
from asr_svc.repeats import drop_repeats, is_repeat, words
from modelhost.catalog import ModelSpec

pytestmark = pytest.mark.unit


def seg(text: str) -> dict:
    return {"id": 99, "text": text, "start": 0.0, "end": 1.0}


def test_a_sentence_said_again_is_dropped_and_the_rest_renumbered() -> None:
    segments = [seg(" He might even have been made amiable himself."), seg(" Ten of clubs."),
                seg(" He might even have been made amiable himself."), seg(" Seven of hearts.")]
    kept, dropped = drop_repeats(segments)
    assert dropped == 1
    assert [s["text"] for s in kept] == [" He might even have been made amiable himself.", " Ten of clubs.",
                                         " Seven of hearts."]
    assert [s["id"] for s in kept] == [0, 1, 2]


def test_the_tail_of_the_last_sentence_again_is_a_repeat() -> None:
    assert is_repeat(words("made amiable himself"), [words("He might even have been made amiable himself.")])


def test_short_repeats_are_real_speech_and_stay() -> None:
    kept, dropped = drop_repeats([seg("Yes."), seg("Yes."), seg("Five, five."), seg("five five")])
    assert dropped == 0 and len(kept) == 4


def test_only_the_window_of_recent_segments_counts() -> None:
    first = seg("the quick brown fox")
    others = [seg(f"sentence number {n} here") for n in ("one", "two", "three")]
    kept, dropped = drop_repeats([first, *others, seg("the quick brown fox")], window=3)
    assert dropped == 0 and len(kept) == 5
    assert drop_repeats([first, *others, seg("The quick, brown fox!")], window=4)[1] == 1


def test_punctuation_and_case_do_not_hide_a_repeat() -> None:
    assert words("Ten of Clubs, four Queen of clubs.") == ["ten", "of", "clubs", "four", "queen", "of", "clubs"]


def _backend(**options) -> FasterWhisperTranscriber:
    spec = ModelSpec(id="m", family="asr", backend="faster_whisper", source="/nonexistent", device="cpu",
                     dtype="int8", options=options)
    return FasterWhisperTranscriber(spec, cache_dir="/nonexistent-cache")


ITEM = TranscribeItem(audio=np.zeros(16000, np.int16), language="en")


def test_the_defaults_guard_against_whisper_loops() -> None:
    options = _backend()._options(ITEM, "en", first=True, duration_s=10.0)
    assert options["condition_on_previous_text"] is False
    assert options["vad_filter"] is False  # auto: short audio keeps every sample
    assert (options["compression_ratio_threshold"], options["log_prob_threshold"], options["no_speech_threshold"]) \
        == (2.4, -1.0, 0.6)
    assert _backend()._options(ITEM, "en", first=True, duration_s=31.0)["vad_filter"] is True
    assert _backend().drop_repeats is True


def test_a_request_turns_the_guards_back() -> None:
    item = TranscribeItem(audio=ITEM.audio, language="en", condition_on_previous_text=True, vad_filter=False)
    options = _backend()._options(item, "en", first=True, duration_s=60.0)
    assert options["condition_on_previous_text"] is True and options["vad_filter"] is False


def test_the_catalog_sets_or_switches_off_each_threshold() -> None:
    backend = _backend(compression_ratio_threshold=2.0, no_speech_threshold=None, condition_on_previous_text=True)
    options = backend._options(ITEM, "en", first=True, duration_s=5.0)
    assert options["compression_ratio_threshold"] == 2.0 and options["no_speech_threshold"] is None
    assert options["condition_on_previous_text"] is True
