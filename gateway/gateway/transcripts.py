"""Speech-to-text results in OpenAI's response formats: json, text, srt, verbose_json, vtt; and OpenAI's
form, as the OpenAPI document shows it.

Pure functions of the transcript the asr service returns (``modelhost.families.asr.TranscriptionResponse``),
so they are tested without any process. The language table is Whisper's, shared with the asr service in
``modelhost.languages``: ``verbose_json`` reports the language by name ("english"), as OpenAI does.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from modelhost.families.asr import Prompt, Segment, Temperature, TranscriptionResponse
from modelhost.languages import LANGUAGES, language_code

__all__ = ["LANGUAGES", "language_code", "render"]

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["segment", "word"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
MAX_FORM_FIELDS = 32
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})
"""Returned as ``text/plain``, as OpenAI does; the others as JSON."""


def _form_schema(schema: dict[str, Any]) -> None:
    """A form field is a string or left out, never null (no ``"default": null``); like OpenAI's, timestamp
    granularities go with verbose_json only; and the route reads at most ``MAX_FORM_FIELDS`` fields."""
    for prop in schema["properties"].values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]
    schema["maxProperties"] = MAX_FORM_FIELDS - len(GRANULARITIES)  # the granularities: one property, two fields
    schema["anyOf"] = [{"properties": {"timestamp_granularities[]": {"maxItems": 0}}},
                       {"properties": {"response_format": {"const": "verbose_json"}}, "required": ["response_format"]}]


class TranscriptionUpload(BaseModel):
    """OpenAI's multipart form of ``/v1/audio/transcriptions`` and ``/v1/audio/translations``, as the OpenAPI
    document shows it. The route reads the form itself, so that each bad field keeps its own 4xx code, and
    checks the options with the asr family's ``TranscriptionOptions``, whose limits these types are."""

    model_config = ConfigDict(json_schema_extra=_form_schema)

    file: bytes = Field(description="The audio: wav, flac, mp3, ogg/opus, m4a/aac, webm, mp4.", min_length=1)
    model: str | SkipJsonSchema[None] = Field(
        None, description="An asr model of the catalog; default: GATEWAY_DEFAULT_ASR_MODEL, else the catalog's first.")
    language: str | SkipJsonSchema[None] = Field(
        None, description="ISO-639-1 code of the spoken language (Whisper's English name, and a region as in "
        "'en-US', are taken too); default: detected. For a translation, the source language.",
        json_schema_extra={"enum": list(LANGUAGES)})
    prompt: Prompt | SkipJsonSchema[None] = Field(None, description="Text that conditions the transcript (spellings, style).")
    temperature: Temperature | SkipJsonSchema[None] = None
    condition_on_previous_text: bool | SkipJsonSchema[None] = Field(
        None, description="Whisper: feed each 30 s window the text of the one before; default: the model's (off).")
    vad_filter: bool | SkipJsonSchema[None] = Field(
        None, description="faster-whisper: skip what the VAD hears as silence; default: the model's (on past 30 s).")
    drop_repeats: bool | SkipJsonSchema[None] = Field(
        None, description="Whisper: drop a segment that repeats the ones before it; default: the model's (on).")
    response_format: ResponseFormat = "json"
    timestamp_granularities: list[Granularity] = Field(
        default_factory=list, alias="timestamp_granularities[]", max_length=len(GRANULARITIES),
        description="With verbose_json: segment (the default) and/or word.")
    stream: Literal[False] = Field(False, description="Streamed transcripts are not offered.")


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
