"""Speech-to-text results in OpenAI's response formats: json, text, srt, verbose_json, vtt.

Pure functions of the transcript the asr service returns (text, language code, duration, segments, words),
so they are tested without any process. The language table is Whisper's (the asr service has the same
one): the gateway checks ``language`` before any model is loaded, and ``verbose_json`` reports the
language by name ("english"), as OpenAI does.
"""

from __future__ import annotations

import math
from typing import Any

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
TEXT_FORMATS = frozenset({"text", "srt", "vtt"})
"""Returned as ``text/plain``, as OpenAI does; the others as JSON."""

SEGMENT_FIELDS = ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                  "compression_ratio", "no_speech_prob")

LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
    "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak", "te": "telugu", "fa": "persian",
    "lv": "latvian", "bn": "bengali", "sr": "serbian", "az": "azerbaijani", "sl": "slovenian", "kn": "kannada",
    "et": "estonian", "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer", "sn": "shona",
    "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan", "ka": "georgian", "be": "belarusian",
    "tg": "tajik", "sd": "sindhi", "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao",
    "uz": "uzbek", "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan",
    "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}

_ALIASES = {"burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
            "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
            "castilian": "es", "mandarin": "zh"}
_BY_NAME = {name: code for code, name in LANGUAGES.items()} | _ALIASES


def language_code(value: str) -> str | None:
    """``"en"``, ``"EN"``, ``"english"``, ``"en-US"`` → ``"en"``; ``None`` for a language Whisper does not know."""
    v = value.strip().lower().replace("_", "-")
    if v in LANGUAGES:
        return v
    if v in _BY_NAME:
        return _BY_NAME[v]
    base = v.split("-", 1)[0]
    return base if base in LANGUAGES and base != v else None


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
