"""The speech-to-text response formats, from the transcript the asr service returns."""

from __future__ import annotations

import pytest

from gateway.transcripts import language_code, render, srt, timestamp, vtt
from modelhost.families.asr import Segment, TranscriptionResponse

pytestmark = pytest.mark.unit

SEGMENT_DICTS = [
    {"id": 0, "seek": 0, "start": 0.0, "end": 2.5, "text": " Hello there.", "tokens": [1, 2], "temperature": 0.0,
     "avg_logprob": -0.2, "compression_ratio": 1.1, "no_speech_prob": 0.01},
    {"id": 1, "seek": 372550, "start": 3725.5, "end": 3726.0004, "text": "General Kenobi.", "tokens": [3],
     "temperature": 0.2, "avg_logprob": -0.4, "compression_ratio": 1.0, "no_speech_prob": 0.02},
]
SEGMENTS = [Segment(**s) for s in SEGMENT_DICTS]
RESULT = TranscriptionResponse(
    model="whisper", task="transcribe", text="Hello there. General Kenobi.", language="en", duration=3726.2,
    segments=SEGMENTS, words=[{"word": " Hello", "start": 0.0, "end": 0.4, "probability": 0.9}],
    audio={"container": "wav", "codec": "pcm_s16le", "sample_rate": 16000, "channels": 1, "peak_dbfs": -3.0, "silent": False},
    timings={"decode_ms": 1.0, "inference_ms": 2.0})


@pytest.mark.parametrize("seconds, marker, expected", [
    (0.0, ",", "00:00:00,000"), (2.5, ",", "00:00:02,500"), (3725.5, ".", "01:02:05.500"),
    (59.9996, ",", "00:01:00,000"), (-0.2, ".", "00:00:00.000"), (100 * 3600 + 1.25, ".", "100:00:01.250"),
])
def test_timestamps_are_hours_minutes_seconds_and_milliseconds(seconds: float, marker: str, expected: str) -> None:
    assert timestamp(seconds, marker) == expected


def test_srt_numbers_its_cues_from_one_and_strips_the_text() -> None:
    assert srt(SEGMENTS) == ("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
                             "2\n01:02:05,500 --> 01:02:06,000\nGeneral Kenobi.\n\n")


def test_vtt_has_its_header_and_dotted_milliseconds() -> None:
    assert vtt(SEGMENTS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
                             "01:02:05.500 --> 01:02:06.000\nGeneral Kenobi.\n\n")


def test_no_segments_make_empty_subtitles() -> None:
    assert srt([]) == "" and vtt([]) == "WEBVTT\n\n"


def test_json_is_the_text_and_the_duration_used() -> None:
    assert render(RESULT, "json", [], "transcribe") == {"text": RESULT.text, "usage": {"type": "duration", "seconds": 3727}}


def test_text_ends_with_a_newline() -> None:
    assert render(RESULT, "text", [], "transcribe") == "Hello there. General Kenobi.\n"


def test_verbose_json_names_the_language_and_has_segments_by_default() -> None:
    body = render(RESULT, "verbose_json", [], "translate")
    assert (body["task"], body["language"], body["duration"], body["text"]) == ("translate", "english", 3726.2, RESULT.text)
    assert body["segments"] == SEGMENT_DICTS and "words" not in body


def test_verbose_json_words_only_when_asked_and_segments_only_when_asked_with_them() -> None:
    words = render(RESULT, "verbose_json", ["word"], "transcribe")
    assert words["words"] == [{"word": "Hello", "start": 0.0, "end": 0.4}] and "segments" not in words
    both = render(RESULT, "verbose_json", ["word", "segment"], "transcribe")
    assert both["segments"] == SEGMENT_DICTS and len(both["words"]) == 1


def test_verbose_json_without_a_language_says_unknown() -> None:
    assert render(RESULT.model_copy(update={"language": None}), "verbose_json", [], "transcribe")["language"] == "unknown"


@pytest.mark.parametrize("value, code", [
    ("en", "en"), ("EN", "en"), ("english", "en"), ("en-US", "en"), ("pt_BR", "pt"), ("Mandarin", "zh"),
    ("haw", "haw"), ("xx", None), ("klingon", None), ("", None),
])
def test_language_codes_names_and_regions(value: str, code: str | None) -> None:
    assert language_code(value) == code
