"""Speech to text, OpenAI-compatible: ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``.

The official ``openai`` client works unchanged: ``client.audio.transcriptions.create(model=..., file=...)``
in every ``response_format`` (json, text, srt, verbose_json, vtt) with ``timestamp_granularities``, and
``client.audio.translations.create(...)``. Extensions: ``model`` may be left out (``GATEWAY_DEFAULT_ASR_MODEL``,
else the catalog's first asr model), and translations take ``language``, the spoken (source) language.

Every field is checked here before any model is loaded or any audio decoded: the body (415 not multipart,
400 no ``file``, 400 empty file, 413 too large), the model (404), ``response_format`` (400),
``timestamp_granularities[]`` (400; like OpenAI's, only with ``verbose_json``), ``temperature`` (400
outside 0..1), ``language`` (400 unless Whisper knows it), ``prompt`` (400 too long), ``stream`` (400:
not supported). The asr service decodes the audio and answers 415 (not audio), 400 (no samples, corrupt)
and 413 (too long) itself, with ``src: asr-svc``; what a model can do (pocketsphinx: English only, no
translation) it checks too, before running anything.

The service always returns the full transcript (text, language, duration, segments, words when asked);
the format is rendered here (``gateway.transcripts``): text, srt and vtt as ``text/plain`` like OpenAI's.
"""

from __future__ import annotations

import math
from typing import Any

import aiohttp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from modelhost.client import ModelHostClient
from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, request_id_of

from ..bodies import FORM_OVERHEAD_BYTES, read_body
from ..state import Gateway, gw
from ..transcripts import GRANULARITIES, RESPONSE_FORMATS, TEXT_FORMATS, language_code, render

router = APIRouter(tags=["audio"])

FAMILY = "asr"
MAX_PROMPT_CHARS = 2000
_FIELDS = ("model", "language", "prompt", "temperature", "response_format", "stream")
_GRANULARITY_KEYS = ("timestamp_granularities[]", "timestamp_granularities")

_FORM_SCHEMA = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary", "description": "The audio: wav, flac, mp3, ogg/opus, m4a/aac, webm, mp4."},
    "model": {"type": "string", "description": "An asr model of the catalog; default: the first."},
    "language": {"type": "string", "description": "ISO-639-1 code of the spoken language; default: detected."},
    "prompt": {"type": "string", "description": "Text that conditions the transcript (spellings, style)."},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": list(GRANULARITIES)},
                                  "description": "With verbose_json: segment (default) and/or word."},
}}


def _route(path: str, summary: str):  # noqa: ANN202 - a decorator
    return router.post(path, summary=summary, response_model=None,
                       openapi_extra={"requestBody": {"content": {"multipart/form-data": {"schema": _FORM_SCHEMA}}}},
                       responses={200: {"content": {"application/json": {}, "text/plain": {}}}})


@_route("/v1/audio/transcriptions", "Transcribe speech (OpenAI-compatible)")
async def transcriptions(request: Request) -> Response:
    return await _handle(request, "transcribe")


@_route("/v1/audio/translations", "Translate speech into English text (OpenAI-compatible)")
async def translations(request: Request) -> Response:
    return await _handle(request, "translate")


def _default_model(g: Gateway) -> str:
    if g.settings.default_asr_model:
        return g.settings.default_asr_model
    for m in g.catalog.models:
        if m.family == FAMILY:
            return m.id
    raise BadRequest("no asr model is in the catalog; name one with 'model'", param="model")


async def _handle(request: Request, task: str) -> Response:
    g = gw(request)
    limit = g.settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(f"send multipart/form-data with the audio in 'file', not {ctype or 'no Content-Type'}",
                                   code="unsupported_content_type")
    await read_body(request, limit + FORM_OVERHEAD_BYTES)
    try:
        form = await request.form(max_files=1, max_fields=32)
    except Exception as e:  # python-multipart's parse errors, or more files/fields than allowed
        raise BadRequest(f"the multipart body could not be parsed: {e}", code="invalid_multipart")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest("the form needs a 'file' field holding the audio", param="file", code="missing_file")
    fields = {k: form.get(k) for k in _FIELDS}
    for key, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"{key} must be a plain form field, not a file", param=key)
    granularities = [v for key in _GRANULARITY_KEYS for v in form.getlist(key)]
    req = _validated(g, task, fields, granularities)
    data = await upload.read()
    if not data:
        raise BadRequest("the file is empty", param="file", code="empty_file")
    if len(data) > limit:
        raise PayloadTooLarge(f"the file has {len(data)} bytes; the limit is {limit}", param="file")
    rid = request_id_of(request)
    path = "/v1/transcriptions" if task == "transcribe" else "/v1/translations"

    async def call(client: ModelHostClient) -> Any:
        out = aiohttp.FormData()
        out.add_field("file", data, filename=upload.filename or "audio", content_type="application/octet-stream")
        out.add_field("model", req["model"])
        for key in ("language", "prompt", "temperature"):
            if req[key] is not None:
                out.add_field(key, str(req[key]))
        out.add_field("word_timestamps", "true" if "word" in req["granularities"] else "false")
        return await client.request("POST", path, data=out, timeout_s=g.settings.transcription_timeout_s, request_id=rid)

    result = await g.access.use(req["model"], FAMILY, call)
    body = render(result, req["response_format"], req["granularities"], task)
    if req["response_format"] in TEXT_FORMATS:
        return PlainTextResponse(body)
    return JSONResponse(body)


def _validated(g: Gateway, task: str, fields: dict[str, str | None], granularities: list[str]) -> dict[str, Any]:
    """The request as it is sent on, or the 4xx for its first bad field."""
    model = fields["model"] or _default_model(g)
    g.access.spec(model, FAMILY)  # 404 for an unknown model
    fmt = fields["response_format"] or "json"
    if fmt not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {fmt!r}",
                         param="response_format", code="unsupported_response_format")
    for value in granularities:
        if value not in GRANULARITIES:
            raise BadRequest(f"timestamp_granularities[] must be segment or word, not {value!r}",
                             param="timestamp_granularities[]", code="unsupported_timestamp_granularity")
    if granularities and fmt != "verbose_json":
        raise BadRequest("timestamp_granularities[] needs response_format verbose_json",
                         param="timestamp_granularities[]", code="unsupported_timestamp_granularity")
    temperature = None
    if fields["temperature"] not in (None, ""):
        try:
            temperature = float(fields["temperature"])
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:  # NaN fails this too
            raise BadRequest("temperature must be a number between 0 and 1", param="temperature",
                             code="temperature_out_of_range")
    language = None
    if fields["language"]:
        language = language_code(fields["language"])
        if language is None:
            raise BadRequest(f"language {fields['language']!r} is not a language Whisper knows (ISO-639-1, e.g. 'en')",
                             param="language", code="unsupported_language")
    prompt = fields["prompt"] or None
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt is longer than {MAX_PROMPT_CHARS} characters", param="prompt")
    if (fields["stream"] or "false").lower() not in ("false", "0"):
        raise BadRequest("streaming transcripts are not supported; leave stream out", param="stream",
                         code="streaming_not_supported")
    return {"model": model, "response_format": fmt, "granularities": granularities, "temperature": temperature,
            "language": language, "prompt": prompt}
