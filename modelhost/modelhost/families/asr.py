"""Speech to text: the contract between the gateway (``/v1/audio/transcriptions``, ``/v1/audio/translations``,
the ``transcribe`` job) and asr-svc (``POST /v1/transcriptions``, ``POST /v1/translations``).

- ``TranscriptionOptions``: what a transcription asks for beside the audio and the model, with its limits;
  ``options()`` checks them (400, each bad field with its own code) for the gateway's route, its jobs
  task and the service alike.
- ``TranscriptionForm``: the service's form beside ``file``, as ``transcribe()`` sends it. Types only, and
  temperature's range: a value of the wrong type is 422 at the service, as FastAPI answers it.
- ``TranscriptionResponse``: what the service answers, whatever the response format the gateway renders.
- ``transcribe()``: the one upstream call.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from ..errors import BadRequest
from ..languages import language_code
from . import Requester, not_a_bool, post_form, validated

FAMILY = "asr"
MAX_PROMPT_CHARS = 2000
Task = Literal["transcribe", "translate"]
PATHS: dict[str, str] = {"transcribe": "/v1/transcriptions", "translate": "/v1/translations"}

Temperature = Annotated[float, Field(ge=0.0, le=1.0, description="0 (default): greedy decoding, with fallback to "
                                                                 "higher temperatures where the backend has it.")]


def _blank_is_none(value: Any) -> Any:
    """A form sends an empty field for one left out."""
    return None if value == "" else value


def _whisper_language(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # the str type says what is wrong
    code = language_code(value)
    if code is None:
        raise PydanticCustomError("unsupported_language",
                                  "'{value}' is not a language Whisper knows (ISO-639-1, e.g. 'en')", {"value": value})
    return code


Language = Annotated[str, BeforeValidator(_whisper_language)]
"""A language Whisper knows, as its code or its English name, with or without a region (``en-US``);
validated to the code (``en``)."""

Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]


def _true_or_false(value: Any) -> Any:
    """A form's ``true``/``false`` (any case) as a bool; nothing else (pydantic would take "1", "yes", "on")."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise PydanticCustomError("bool_parsing", "must be true or false, not '{value}'", {"value": value})


Switch = Annotated[bool | None, BeforeValidator(_true_or_false), BeforeValidator(_blank_is_none)]
"""true, false, or left out (blank): the model's default."""


class TranscriptionOptions(BaseModel):
    """What a transcription asks for beside the audio and the model."""

    language: Annotated[Language | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="The spoken language, ISO-639-1 (a name or a region is taken too); default: detected. "
        "For a translation, the source language.")
    prompt: Annotated[Prompt | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Text that conditions the transcript (spellings, style).")
    temperature: Annotated[Temperature | None, BeforeValidator(_blank_is_none), BeforeValidator(not_a_bool)] = None
    condition_on_previous_text: Switch = Field(
        None, description="Whisper: feed each 30 s window the text of the one before (better continuity, and the "
        "cause of Whisper's repetition loops); default: the model's (off).")
    vad_filter: Switch = Field(
        None, description="faster-whisper: skip what the Silero VAD hears as silence; default: the model's "
        "(on for audio longer than 30 s).")
    drop_repeats: Switch = Field(
        None, description="Whisper: drop a segment that repeats what the segments before it said; default: the "
        "model's (on).")


GUARD_OPTIONS = ("condition_on_previous_text", "vad_filter", "drop_repeats")
"""The options against Whisper's failure modes; ``None`` leaves each to the model's catalog entry."""

_CODES = {"language": "unsupported_language", "temperature": "temperature_out_of_range"}


def options(values: Mapping[str, Any]) -> TranscriptionOptions:
    """``values`` as options, or 400 naming the first bad field: ``unsupported_language``,
    ``temperature_out_of_range``, else ``bad_request``."""
    try:
        return validated(TranscriptionOptions, dict(values))
    except BadRequest as e:
        raise BadRequest(e.message, param=e.param, code=_CODES.get(e.param or "", e.code)) from None


class TranscriptionForm(BaseModel):
    """The asr service's form fields beside ``file``."""

    model: str = Field(description="Catalog id of an asr model.")
    language: str | None = Field(None, description="ISO-639-1 code of the spoken (source) language; default: detect.")
    prompt: str | None = Field(None, description="Text that conditions the transcript (spellings, style).")
    temperature: Temperature | None = None
    word_timestamps: bool = Field(False, description="Return word-level timestamps.")
    condition_on_previous_text: Switch = Field(None, description="See ``TranscriptionOptions``.")
    vad_filter: Switch = Field(None, description="See ``TranscriptionOptions``.")
    drop_repeats: Switch = Field(None, description="See ``TranscriptionOptions``.")


class Segment(BaseModel):
    id: int
    seek: int = Field(description="Where the segment's window started, in 10 ms frames.")
    start: float = Field(description="Seconds from the start of the audio.")
    end: float
    text: str
    tokens: list[int] = Field(description="Token ids (Whisper backends); empty for pocketsphinx.")
    temperature: float = Field(description="Temperature the segment was decoded at.")
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float = Field(description="The model's confidence in the word, 0..1.")


class AudioInfo(BaseModel):
    container: str = Field(description="FFmpeg's name of the container, e.g. 'wav', 'ogg', 'mov,mp4,m4a,3gp,3g2,mj2'.")
    codec: str
    sample_rate: int = Field(description="Sample rate of the upload (the models hear it at 16 kHz).")
    channels: int = Field(description="Channels of the upload (mixed down to mono).")
    peak_dbfs: float | None = Field(description="Level of the loudest sample; null for digital silence.")
    silent: bool = Field(description="Below the silence level: answered with an empty transcript, no model run.")


class Timings(BaseModel):
    decode_ms: float = Field(description="Time to read and decode the upload.")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class TranscriptionResponse(BaseModel):
    object: str = "audio.transcription"
    model: str
    task: Task
    text: str
    language: str | None = Field(description="ISO-639-1 code: the one asked for, else the one the model found.")
    duration: float = Field(description="Seconds of audio.")
    segments: list[Segment]
    words: list[Word] | None = Field(None, description="Present when word_timestamps was asked for.")
    audio: AudioInfo
    timings: Timings


async def transcribe(upstream: Requester, *, model: str, audio: bytes, options: TranscriptionOptions,
                     task: Task = "transcribe", word_timestamps: bool = False, timeout_s: float,
                     request_id: str | None = None) -> TranscriptionResponse:
    """The full transcript of ``audio`` (any container the service decodes); the service's errors as the
    ``Upstream`` maps them, an answer that does not fit ``TranscriptionResponse`` as 502."""
    form = TranscriptionForm(model=model, word_timestamps=word_timestamps, **options.model_dump())
    return await post_form(upstream, PATHS[task], form, [("file", "audio", audio)], TranscriptionResponse,
                           service="asr-svc", timeout_s=timeout_s, request_id=request_id)
