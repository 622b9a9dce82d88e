"""Text to speech, OpenAI-compatible: ``POST /v1/audio/speech`` and ``GET /v1/audio/voices``.

The official ``openai`` client works unchanged (``client.audio.speech.create(model=..., voice=...,
input=...)``, and ``with_streaming_response`` to read the audio as it comes). Extensions: ``voice`` may be
left out (the model's first voice), and ``language`` picks the language of a multilingual model (pass it
with the client's ``extra_body``).

Every input is checked before any audio is made, by the tts family's contract (``modelhost.families.tts``):
the body (415 unless application/json), ``input`` (400 empty, 413 over ``GATEWAY_TTS_MAX_INPUT_CHARS``),
``response_format`` (400), ``speed`` (400 outside 0.25 to 4.0), then the model (404) and the voice (404; the
voices come from the service, which reads them without loading the model). OpenAI's voice names (``alloy``,
``ash``, ...) are aliases the service lists with the voices (``tts.voice_aliases``), resolved here by the same
``ModelVoices.voice()``; a model that lists no voices because something it needs is missing (flite's binary)
is 503 ``model_unavailable`` with the reason, and one on a GPU this machine lacks too (the coordinator's).

Streaming: the service synthesises sentence by sentence and streams each sentence's audio as it is made;
this route relays the bytes as they arrive. The model is held for the whole stream, not only until the
response starts: the hold and the upstream response are entered on an exit stack here, so an error before
the first byte (an envelope from the service, a refused connection, a timeout) is answered as any other
route's, and the stack is closed when the response ends, however it ends (finished, failed, or the client
left before the body started). After the first byte an upstream failure can only end the stream early;
a response left unread drops the upstream connection, which stops the synthesis.
"""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from modelhost.errors import UpstreamError, error_responses, request_id_of
from modelhost.families import default_model, tts

from ..bodies import read_json_object
from ..relay import RelayResponse
from ..state import gw

router = APIRouter(tags=["audio"])

# Each character may come JSON-escaped as a surrogate pair (12 bytes); plus the other fields.
_BYTES_PER_CHAR, _BODY_OVERHEAD = 12, 16 * 1024
_RELAY_HEADERS = ("content-type", "x-sample-rate", "x-sentences")
_AUDIO_TYPES = ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm")


@router.post(
    "/v1/audio/speech",
    summary="Speak text (OpenAI-compatible); the audio streams sentence by sentence",
    response_class=StreamingResponse,
    responses={200: {"description": "The audio, streamed as it is made.", "content": {t: {} for t in _AUDIO_TYPES}},
               **error_responses(400, 401, 404, 413, 415, 429, 502, 503, 504)},
    openapi_extra={"requestBody": {"required": True,
                                   "content": {"application/json": {"schema": tts.SpeechRequest.model_json_schema()}}}},
)
async def speech(request: Request) -> StreamingResponse:
    g = gw(request)
    max_chars = g.settings.tts_max_input_chars
    body = await read_json_object(request, max_chars * _BYTES_PER_CHAR + _BODY_OVERHEAD)
    req = tts.speech_request(body, max_input_chars=max_chars)
    model = req.model or default_model(g.catalog.models, tts.FAMILY)
    spec = g.access.spec(model, tts.FAMILY)  # 404 for an unknown model
    rid = request_id_of(request)
    listing = await tts.voices(g.access.client(spec), model=model, request_id=rid)
    entry = next((e for e in listing.data if e.model == model), None)
    if entry is None:
        raise UpstreamError(f"the tts service did not list model {model}'s voices", code="bad_upstream_response")
    req = req.model_copy(update={"model": model, "voice": entry.voice(req.voice)})

    async with contextlib.AsyncExitStack() as stack:  # an error in here releases what was entered, and is answered
        upstream = await stack.enter_async_context(g.access.hold(model, tts.FAMILY))
        audio = await stack.enter_async_context(
            tts.speak(upstream, req, first_byte_timeout_s=g.settings.request_timeout_s, request_id=rid))
        held = stack.pop_all()  # from here on the response closes it
    headers = {k: audio.headers[k] for k in _RELAY_HEADERS if k in audio.headers}
    media_type = headers.pop("content-type", "application/octet-stream")
    return RelayResponse(audio.content.iter_any(), held, media_type=media_type,
                          headers={**headers, "Cache-Control": "no-store"})


@router.get("/v1/audio/voices", summary="The voices of every tts model (or of one: ?model=)", response_model=tts.VoiceList,
            responses=error_responses(401, 404, 502, 503, 504))
async def voices(request: Request, model: str | None = Query(None, description="Only this model's voices.")) -> tts.VoiceList:
    g = gw(request)
    specs = [g.access.spec(model, tts.FAMILY)] if model else [m for m in g.catalog.models if m.family == tts.FAMILY]
    if not specs:
        return tts.VoiceList(data=[])
    listing = await tts.voices(g.access.client(specs[0]), model=model, request_id=request_id_of(request))
    by_model = {entry.model: entry for entry in listing.data}
    return tts.VoiceList(data=[by_model[s.id] for s in specs if s.id in by_model])
