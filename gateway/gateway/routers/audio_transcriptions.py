"""Speech to text, OpenAI-compatible: ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``.

The official ``openai`` client works unchanged: ``client.audio.transcriptions.create(model=..., file=...)``
in every ``response_format`` (json, text, srt, verbose_json, vtt) with ``timestamp_granularities``, and
``client.audio.translations.create(...)``. Extensions: ``model`` may be left out (``GATEWAY_DEFAULT_ASR_MODEL``,
else the catalog's first asr model), and translations take ``language``, the spoken (source) language.

Every field is checked here before any model is loaded or any audio decoded: the body (415 not multipart,
400 no ``file``, 400 empty file, 413 too large), the model (404), ``response_format`` (400),
``timestamp_granularities[]`` (400; like OpenAI's, only with ``verbose_json``), ``stream`` (400: not
supported), and the options the asr family's contract checks (``modelhost.families.asr``: ``temperature``,
``language``, ``prompt``, and the Whisper guards ``condition_on_previous_text``, ``vad_filter``,
``drop_repeats``: true/false, left out for the model's default). The asr service decodes the audio and
answers 415 (not audio), 400 (no samples, corrupt) and 413 (too long) itself, with ``src: asr-svc``; what a model can do (pocketsphinx: English only,
no translation) it checks too, before running anything.

The service always returns the full transcript (text, language, duration, segments, words when asked);
the format is rendered here (``gateway.transcripts``): text, srt and vtt as ``text/plain`` like OpenAI's.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, error_responses, request_id_of
from modelhost.families import asr, default_model

from ..bodies import FORM_OVERHEAD_BYTES, read_body
from ..state import Gateway, gw
from ..transcripts import GRANULARITIES, MAX_FORM_FIELDS, RESPONSE_FORMATS, TEXT_FORMATS, TranscriptionUpload, render

router = APIRouter(tags=["audio"])

_OPTIONS = ("language", "prompt", "temperature", *asr.GUARD_OPTIONS)
_FIELDS = ("model", *_OPTIONS, "response_format", "stream")
_GRANULARITY_KEYS = ("timestamp_granularities[]", "timestamp_granularities")


def _route(path: str, summary: str):  # noqa: ANN202 - a decorator
    schema = TranscriptionUpload.model_json_schema()
    return router.post(
        path, summary=summary, response_model=None,
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}},
        responses={200: {"description": "The transcript in the response_format asked for.",
                         "content": {"application/json": {}, "text/plain": {}}},
                   **error_responses(400, 401, 404, 413, 415, 429, 502, 503, 504)})


@_route("/v1/audio/transcriptions", "Transcribe speech (OpenAI-compatible)")
async def transcriptions(request: Request) -> Response:
    return await _handle(request, "transcribe")


@_route("/v1/audio/translations", "Translate speech into English text (OpenAI-compatible)")
async def translations(request: Request) -> Response:
    return await _handle(request, "translate")


@dataclass
class _Request:
    model: str
    response_format: str
    granularities: list[str]
    options: asr.TranscriptionOptions


async def _handle(request: Request, task: asr.Task) -> Response:
    g = gw(request)
    limit = g.settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType(f"send multipart/form-data with the audio in 'file', not {ctype or 'no Content-Type'}",
                                   code="unsupported_content_type")
    await read_body(request, limit + FORM_OVERHEAD_BYTES)
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
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
    req = _validated(g, fields, granularities)  # type: ignore[arg-type] - plain strings, checked above
    data = await upload.read()
    if not data:
        raise BadRequest("the file is empty", param="file", code="empty_file")
    if len(data) > limit:
        raise PayloadTooLarge(f"the file has {len(data)} bytes; the limit is {limit}", param="file")
    async with g.access.hold(req.model, asr.FAMILY) as upstream:
        result = await asr.transcribe(upstream, model=req.model, audio=data, options=req.options, task=task,
                                      word_timestamps="word" in req.granularities,
                                      timeout_s=g.settings.transcription_timeout_s, request_id=request_id_of(request))
    body = render(result, req.response_format, req.granularities, task)
    if req.response_format in TEXT_FORMATS:
        return PlainTextResponse(body)
    return JSONResponse(body)


def _validated(g: Gateway, fields: dict[str, str | None], granularities: list[str]) -> _Request:
    """The request as it is sent on, or the 4xx for its first bad field."""
    model = fields["model"] or default_model(g.catalog.models, asr.FAMILY, g.settings.default_asr_model)
    g.access.spec(model, asr.FAMILY)  # 404 for an unknown model
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
    options = asr.options({k: fields[k] for k in _OPTIONS})
    if (fields["stream"] or "false").lower() not in ("false", "0"):
        raise BadRequest("streaming transcripts are not supported; leave stream out", param="stream",
                         code="streaming_not_supported")
    return _Request(model=model, response_format=fmt, granularities=granularities, options=options)
