"""Speech-to-text results in OpenAI's response formats: json, text, srt, verbose_json, vtt.

Pure functions of the transcript the asr service returns (text, language code, duration, segments, words),
so they are tested without any process. The language table is Whisper's, shared with the asr service in
``modelhost.languages``: the gateway checks ``language`` before any model is loaded, and ``verbose_json`` reports the
language by name ("english"), as OpenAI does.
"""

from __future__ import annotations

import math
from typing import Any

from modelhost.languages import LANGUAGES, language_code

__all__ = ["LANGUAGES", "language_code", "render"]

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})
"""Returned as ``text/plain``, as OpenAI does; the others as JSON."""

SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob")

def render(result: dict[str, Any], response_format: str, granularities: list[str], task: str) -> Any:
    """The body for ``response_format``: a ``str`` for text/srt/vtt, a dict for json/verbose_json."""
    if response_format == "text":
        return result["text"] + "\n"
    if response_format == "srt":
        return srt(result["segments"])
    if response_format == "vtt":
        return vtt(result["segments"])
    usage = {"type": "duration", "seconds": math.ceil(result["duration"])}
    if response_format == "json":
        return {"text": result["text"], "usage": usage}
    code = result.get("language")
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGES.get(code, code) if code else "unknown",
        "duration": result["duration"],
        "text": result["text"],
    }
    if not granularities or "segment" in granularities:
        body["segments"] = [{k: s[k] for k in SEGMENT_FIELDS} for s in result["segments"]]
    if "word" in granularities:
        body["words"] = [{"word": w["word"].strip(), "start": w["start"], "end": w["end"]} for w in result.get("words") or []]
    body["usage"] = usage
    return body


def srt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{i}\n{timestamp(s['start'], ',')} --> {timestamp(s['end'], ',')}\n{s['text'].strip()}\n"
            for i, s in enumerate(segments, start=1)]
    return "\n".join(cues) + ("\n" if cues else "")


def vtt(segments: list[dict[str, Any]]) -> str:
    cues = [f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{s['text'].strip()}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues) + ("\n" if cues else "")


def timestamp(seconds: float, decimal_marker: str) -> str:
    """``3725.5`` → ``01:02:05,500`` (SRT) or ``01:02:05.500`` (WebVTT)."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"
