"""Text to speech: the contract between the gateway (``/v1/audio/speech``, ``/v1/audio/voices``) and tts-svc
(the same two routes).

- ``SpeechRequest``: OpenAI's speech request, the JSON the gateway takes and ``speak()`` sends on. Its
  types are checked by pydantic (400 at the gateway, 422 at the service, as FastAPI answers it); its values
  by ``check()``, each bad one with its own code, at the gateway and at the service alike.
- ``VoiceList``: the voices of each model, as the service lists them, with OpenAI's voice names
  (``OPENAI_VOICES``) as aliases of them (``voice_aliases()``, the one place they are mapped);
  ``ModelVoices.voice()`` picks the one a request gets, at the gateway and at the service alike.
- ``voices()`` and ``speak()``: the upstream calls.
"""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any, Literal, Mapping, Sequence, get_args

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, field_validator

from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..states import ModelUnavailable
from . import Requester, reply_as, validated

FAMILY = "tts"
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)
MIN_SPEED, MAX_SPEED = 0.25, 4.0
STREAM_FORMATS = ("audio",)
"""OpenAI's ``stream_format``: the bytes stream as they are made ("sse" is not offered)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class SpeechRequest(BaseModel):
    """OpenAI's speech request. Types only: the values (documented in the schema) are checked by
    ``check()``, so that each bad one gets its own 4xx code."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="A tts model of the catalog (GET /v1/audio/voices); "
                                                      "default: the catalog's first.")
    input: StrictStr = Field(description="The text to speak; split into sentences, each streamed as it is made. "
                                         "Over the configured length: 413. Control characters are read as spaces.",
                             json_schema_extra={"minLength": 1, "pattern": r"[^\s\x00-\x1f\x7f]"})
    voice: StrictStr | None = Field(None, description="One of the model's voices, or one of OpenAI's voice names "
                                                      "(alloy, ash, ...: aliases of the model's voices, listed by GET "
                                                      "/v1/audio/voices); default: its first.")
    # null is the default for these two (never None once validated)
    response_format: StrictStr | None = Field("mp3", description="The audio's format.",
                                              json_schema_extra={"enum": [*RESPONSE_FORMATS, None]})
    speed: Annotated[float, Strict(), Field(allow_inf_nan=False)] | None = Field(
        1.0, description="1.0 is the voice's natural rate.", json_schema_extra={"minimum": MIN_SPEED, "maximum": MAX_SPEED})
    language: StrictStr | None = Field(None, description="Language of a multilingual model (XTTS-v2); default: the model's.")
    stream_format: StrictStr | None = Field(None, description="'audio': the bytes stream as they are made.",
                                            json_schema_extra={"enum": [*STREAM_FORMATS, None]})

    @field_validator("response_format", "speed", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any, info: Any) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("input")
    @classmethod
    def _speakable(cls, value: str) -> str:
        """Control characters (a NUL stops a synthesiser's C library) as spaces, a lone surrogate (JSON lets
        one through; UTF-8 has none) as U+FFFD."""
        value = _CONTROL.sub(" ", value)
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check(req: SpeechRequest, *, max_input_chars: int) -> None:
    """The values of ``req``: 400 ``empty_input``, 413 ``input_too_long``, 400 ``unsupported_response_format``,
    ``speed_out_of_range``, ``unsupported_stream_format``."""
    if not req.input.strip():
        raise BadRequest("input is empty", param="input", code="empty_input")
    if len(req.input) > max_input_chars:
        raise PayloadTooLarge(f"input has {len(req.input)} characters; the limit is {max_input_chars}", param="input",
                              code="input_too_long")
    if req.response_format not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", param="response_format",
                         code="unsupported_response_format")
    if not MIN_SPEED <= req.speed <= MAX_SPEED:
        raise BadRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}", param="speed", code="speed_out_of_range")
    if req.stream_format not in (None, *STREAM_FORMATS):
        raise BadRequest("stream_format 'audio' is the one supported (the bytes stream as they are made)",
                         param="stream_format", code="unsupported_stream_format")


def speech_request(values: Mapping[str, Any], *, max_input_chars: int) -> SpeechRequest:
    """A JSON object as a checked request: 400 ``missing_input``, 400 ``bad_request`` for a value of the
    wrong type, then as ``check()``."""
    if values.get("input") is None:
        raise BadRequest("the body needs 'input', the text to speak", param="input", code="missing_input")
    req = validated(SpeechRequest, dict(values))
    check(req, max_input_chars=max_input_chars)
    return req


OPENAI_VOICES: tuple[str, ...] = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
                                   "shimmer", "verse")
"""The voice names of OpenAI's speech API, which its clients send (``alloy`` by default)."""


class VoiceCard(BaseModel):
    id: str
    language: str | None = None
    name: str | None = None


def voice_aliases(voices: Sequence[VoiceCard], *, declared: Mapping[str, Any] | None = None,
                  language: str | None = None) -> dict[str, str]:
    """OpenAI's voice names as a model's voices: ``declared`` (the catalog's ``voice_aliases`` option, such as
    ``{alloy: slt}``) where it names one of ``voices``, the rest spread over the voices in their order (alloy
    the first, ash the second, ... round again when there are fewer; a name's voice does not depend on what
    the catalog declares for the others). The spread takes the voices of
    ``language`` (the model's own), else the English ones, else all, so that ``alloy`` speaks English on a
    model of a hundred languages. A name that is itself one of the model's voices stays that voice."""
    ids = [v.id for v in voices]
    if not ids:
        return {}

    def speaks(lang: str) -> list[str]:
        return [v.id for v in voices if v.language and (v.language == lang or v.language.startswith(f"{lang}-"))]

    pool = (speaks(language) if language else []) or speaks("en") or ids
    given = {str(k): str(v) for k, v in (declared or {}).items() if str(v) in ids}
    return {name: given.get(name) or pool[i % len(pool)] for i, name in enumerate(OPENAI_VOICES) if name not in ids}


class ModelVoices(BaseModel):
    model: str
    backend: str
    voices: list[VoiceCard]
    aliases: dict[str, str] = Field(default_factory=dict,
                                    description="OpenAI's voice names (alloy, ash, ...) and the voice each one speaks with.")
    languages: list[str] | None = Field(None, description="Languages a multilingual model accepts, where the catalog names them.")
    reason: str | None = Field(None, description="Why the model has no voices (what it needs is missing here).")

    def voice(self, asked: str | None) -> str:
        """The voice a request gets: the one ``asked`` for (a voice, or an alias of one), else the model's first;
        404 ``voice_not_found``, 503 ``model_unavailable`` when the model has no voices for a missing requirement."""
        ids = [v.id for v in self.voices]
        if not ids:
            if self.reason:
                raise ModelUnavailable(f"model {self.model} has no voices: {self.reason}", param="model")
            raise NotFound(f"model {self.model} has no voices: its backend found none", param="voice",
                           code="voice_not_found")
        if asked is None:
            return ids[0]
        if asked in ids:
            return asked
        if asked in self.aliases:
            return self.aliases[asked]
        shown = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "")
        raise NotFound(f"model {self.model} has no voice {asked!r}; its voices: {shown}; or one of OpenAI's names: "
                       f"{', '.join(self.aliases)}", param="voice", code="voice_not_found")


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelVoices]


async def voices(upstream: Requester, *, model: str | None = None, timeout_s: float = 10.0,
                 request_id: str | None = None) -> VoiceList:
    """The service's voices, of every model or of ``model``. The service reads them without loading a model."""
    reply = await upstream.request("GET", "/v1/audio/voices", params={"model": model} if model else None,
                                   timeout_s=timeout_s, request_id=request_id)
    return reply_as(VoiceList, reply, "tts-svc")


def speak(upstream: Requester, req: SpeechRequest, *, first_byte_timeout_s: float,
          request_id: str | None = None) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """The speech of ``req``, as a context manager that yields the service's 2xx response with its audio
    unread (``resp.content``; its ``Content-Type``, ``X-Sample-Rate`` and ``X-Sentences``). Errors before
    the first byte as the ``Upstream`` maps them; leaving the block unread drops the connection, which
    stops the synthesis."""
    body = req.model_dump(exclude_none=True, exclude={"stream_format"})
    return upstream.stream("POST", "/v1/audio/speech", first_byte_timeout_s=first_byte_timeout_s,
                           request_id=request_id, json_body=body)
