"""Speech-to-text results in OpenAI's response formats: json, text, srt, verbose_json, vtt; and OpenAI's
form, as the OpenAPI document shows it.

Pure functions of the transcript the asr service returns (``modelhost.families.asr.TranscriptionResponse``),
so they are tested without any process. The language table is Whisper's, shared with the asr service in
``modelhost.languages``: ``verbose_json`` reports the language by name ("english"), as OpenAI does.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import Field

from modelhost.families.asr import Segment, TranscriptionOptions, TranscriptionResponse
from modelhost.languages import LANGUAGES, language_code

__all__ = ["LANGUAGES", "language_code", "render"]

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["segment", "word"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})
"""Returned as ``text/plain``, as OpenAI does; the others as JSON."""


class TranscriptionUpload(TranscriptionOptions):
    """OpenAI's multipart form of ``/v1/audio/transcriptions`` and ``/v1/audio/translations``. The route reads
    the form itself (each bad field keeps its own 4xx code); this model is what the OpenAPI document shows."""

    file: bytes = Field(description="The audio: wav, flac, mp3, ogg/opus, m4a/aac, webm, mp4.")
    model: str | None = Field(None, description="An asr model of the catalog; default: GATEWAY_DEFAULT_ASR_MODEL, "
                                                "else the catalog's first.")
    response_format: ResponseFormat = "json"
    timestamp_granularities: list[Granularity] = Field(
        default_factory=list, alias="timestamp_granularities[]",
        description="With verbose_json: segment (the default) and/or word.")
    stream: bool = Field(False, description="Streamed transcripts are not supported: 400 when true.")


def render(result: TranscriptionResponse, response_format: str, granularities: list[str], task: str) -> Any:
    """The body for ``response_format``: a ``str`` for text/srt/vtt, a dict for json/verbose_json."""
    if response_format == "text":
        return result.text + "\n"
    if response_format == "srt":
        return srt(result.segments)
    if response_format == "vtt":
        return vtt(result.segments)
    usage = {"type": "duration", "seconds": math.ceil(result.duration)}
    if response_format == "json":
        return {"text": result.text, "usage": usage}
    code = result.language
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGES.get(code, code) if code else "unknown",
        "duration": result.duration,
        "text": result.text,
    }
    if not granularities or "segment" in granularities:
        body["segments"] = [s.model_dump() for s in result.segments]
    if "word" in granularities:
        body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end} for w in result.words or []]
    body["usage"] = usage
    return body


def srt(segments: list[Segment]) -> str:
    cues = [f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate(segments, start=1)]
    return "\n".join(cues) + ("\n" if cues else "")


def vtt(segments: list[Segment]) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues) + ("\n" if cues else "")


def timestamp(seconds: float, decimal_marker: str) -> str:
    """``3725.5`` → ``01:02:05,500`` (SRT) or ``01:02:05.500`` (WebVTT)."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"
