"""Text to speech, OpenAI-compatible: ``POST /v1/audio/speech`` and ``GET /v1/audio/voices``.

The official ``openai`` client works unchanged (``client.audio.speech.create(model=..., voice=...,
input=...)``, and ``with_streaming_response`` to read the audio as it comes). Extensions: ``voice`` may be
left out (the model's first voice), and ``language`` picks the language of a multilingual model (pass it
with the client's ``extra_body``).

Every input is checked before any audio is made: the body, ``input`` (400 empty, 413 over
``GATEWAY_TTS_MAX_INPUT_CHARS``), the model (404), ``response_format`` (400), ``speed`` (400 outside 0.25 to
4.0) and the voice (404; the voices come from the service, which reads them without loading the model).

Streaming: the service synthesises sentence by sentence and streams each sentence's audio as it is made;
this route relays the bytes as they arrive. The model is held through ``g.access.use`` for the whole
stream, not only until the response starts: ``use`` runs in a task whose ``call`` opens the upstream
response, hands it to the route once its status is 200, and returns only when the relay has finished (or
the client left). An error before that point (an envelope from the service, a refused connection, a
timeout) is answered as any other route's. After it, an upstream failure can only end the stream early.

The kit's pooled client (``ModelHostClient.request``) reads whole bodies, so the upstream request is made
here on the gateway's aiohttp session, with the service URL from the client and the same error mapping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any, AsyncIterator

import aiohttp
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from modelhost.client import ModelHostClient, ServiceUnreachable, UpstreamEnvelope
from modelhost.errors import (
    REQUEST_ID_HEADER,
    BadRequest,
    DeadlineExceeded,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
    request_id_of,
)

from ..bodies import parse_json_object, read_body
from ..state import Gateway, gw

router = APIRouter(tags=["audio"])
log = logging.getLogger(__name__)

FAMILY = "tts"
RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# Each character may come JSON-escaped as a surrogate pair (12 bytes); plus the other fields.
_BYTES_PER_CHAR, _BODY_OVERHEAD = 12, 16 * 1024
_RELAY_HEADERS = ("content-type", "x-sample-rate", "x-sentences")

SPEECH_BODY_SCHEMA = {"type": "object", "required": ["model", "input"], "properties": {
    "model": {"type": "string", "description": "A tts model of the catalog (GET /v1/audio/voices)."},
    "input": {"type": "string", "description": "The text to speak; split into sentences, each streamed as it is made."},
    "voice": {"type": "string", "description": "One of the model's voices; default: its first."},
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "mp3"},
    "speed": {"type": "number", "minimum": MIN_SPEED, "maximum": MAX_SPEED, "default": 1.0},
    "language": {"type": "string", "description": "Language of a multilingual model (XTTS-v2)."},
}}


def _default_model(g: Gateway) -> str:
    for m in g.catalog.models:
        if m.family == FAMILY:
            return m.id
    raise BadRequest("no tts model is in the catalog", param="model")


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string", param=key)
    return value


def _validated(g: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    """The request as it is sent on, or the 4xx for its first bad field."""
    text = body.get("input")
    if text is None:
        raise BadRequest("the body needs 'input', the text to speak", param="input", code="missing_input")
    if not isinstance(text, str):
        raise BadRequest("input must be a string", param="input")
    if not text.strip():
        raise BadRequest("input is empty", param="input", code="empty_input")
    limit = g.settings.tts_max_input_chars
    if len(text) > limit:
        raise PayloadTooLarge(f"input has {len(text)} characters; the limit is {limit}", param="input", code="input_too_long")
    model = _optional_str(body, "model") or _default_model(g)
    g.access.spec(model, FAMILY)  # 404 for an unknown model
    fmt = body.get("response_format", "mp3")
    if fmt is None:
        fmt = "mp3"
    if fmt not in RESPONSE_FORMATS:
        raise BadRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", param="response_format",
                         code="unsupported_response_format")
    speed = body.get("speed", 1.0)
    speed = 1.0 if speed is None else speed
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed):
        raise BadRequest("speed must be a number", param="speed")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise BadRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED}", param="speed", code="speed_out_of_range")
    if body.get("stream_format") not in (None, "audio"):
        raise BadRequest("stream_format 'audio' is the one supported (the bytes stream as they are made)",
                         param="stream_format", code="unsupported_stream_format")
    return {"model": model, "input": text, "voice": _optional_str(body, "voice"), "response_format": fmt,
            "speed": float(speed), "language": _optional_str(body, "language")}


async def _check_voice(g: Gateway, client: ModelHostClient, req: dict[str, Any], rid: str) -> None:
    listing = await client.request("GET", "/v1/audio/voices", params={"model": req["model"]}, timeout_s=10, request_id=rid)
    [entry] = listing["data"]
    voices = [v["id"] for v in entry["voices"]]
    if req["voice"] is None:
        req["voice"] = voices[0]
    elif req["voice"] not in voices:
        shown = ", ".join(voices[:20]) + (" ..." if len(voices) > 20 else "")
        raise NotFound(f"model {req['model']} has no voice {req['voice']!r}; its voices: {shown}", param="voice",
                       code="voice_not_found")


@router.post(
    "/v1/audio/speech",
    summary="Speak text (OpenAI-compatible); the audio streams sentence by sentence",
    response_class=StreamingResponse,
    responses={200: {"description": "The audio, streamed as it is made.",
                     "content": {t: {} for t in ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm")}}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": SPEECH_BODY_SCHEMA}}}},
)
async def speech(request: Request) -> StreamingResponse:
    g = gw(request)
    limit = g.settings.tts_max_input_chars * _BYTES_PER_CHAR + _BODY_OVERHEAD
    req = _validated(g, parse_json_object(await read_body(request, limit)))
    rid = request_id_of(request)
    spec = g.access.spec(req["model"], FAMILY)
    client = g.access.client(spec)
    await _check_voice(g, client, req, rid)

    opened: asyncio.Future[aiohttp.ClientResponse] = asyncio.get_running_loop().create_future()
    relayed = asyncio.Event()

    async def call(client: ModelHostClient) -> None:
        upstream = await _open_stream(g, client, "/v1/audio/speech", req, rid)
        if opened.done():  # pragma: no cover - the route gave up waiting (it was cancelled)
            upstream.release()
            return
        opened.set_result(upstream)
        await relayed.wait()  # hold the model until the relay is over

    holder = asyncio.create_task(g.access.use(req["model"], FAMILY, call), name=f"tts-hold-{rid}")
    try:
        await asyncio.wait({holder, opened}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        relayed.set()
        holder.cancel()
        raise
    if not opened.done():
        opened.cancel()
        holder.result()  # raises the error that ended it (an envelope, 503, 504 ...)
        raise UpstreamError("the tts service closed the request without an answer")  # pragma: no cover
    upstream = opened.result()
    headers = {k: upstream.headers[k] for k in _RELAY_HEADERS if k in upstream.headers}
    media_type = headers.pop("content-type", "application/octet-stream")

    finished = False

    async def relay() -> AsyncIterator[bytes]:
        nonlocal finished
        async for chunk in upstream.content.iter_any():
            yield chunk
        finished = True

    async def done() -> None:
        if finished:
            upstream.release()
        else:  # the client left, or the upstream failed: drop the connection, so the service stops too
            upstream.close()
        relayed.set()
        try:
            await holder
        except Exception:  # noqa: BLE001 - the stream is over; the model is released either way
            log.exception("tts request %s: releasing the model failed", rid)

    return _RelayResponse(relay(), done, media_type=media_type, headers={**headers, "Cache-Control": "no-store"})


class _RelayResponse(StreamingResponse):
    """Runs ``done`` however the response ends (finished, failed, or the client left before the body
    started), so the upstream connection and the model are always released."""

    def __init__(self, content: AsyncIterator[bytes], done: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._done = done

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._done()


async def _open_stream(g: Gateway, client: ModelHostClient, path: str, body: dict[str, Any],
                       rid: str) -> aiohttp.ClientResponse:
    """POST ``body`` and return the response once its status is 200, its body still unread. Errors as
    ``ModelHostClient.request`` maps them: an envelope passed on unchanged, 503 when unreachable, 504 on
    a timeout (to the first byte; the stream itself may run as long as the text needs)."""
    timeout_s = g.settings.request_timeout_s
    try:
        resp = await g.session.post(client.base_url + path, json=body, headers={REQUEST_ID_HEADER: rid},
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_s))
    except asyncio.TimeoutError as e:
        raise DeadlineExceeded(f"{client.name} did not answer within {timeout_s:.0f} s", code="upstream_timeout") from e
    except (aiohttp.ClientConnectionError, OSError) as e:
        raise ServiceUnreachable(f"the {client.name} service is not reachable; retry shortly", retry_after_s=5) from e
    if resp.status == 200:
        return resp
    try:
        raw = await resp.read()
    finally:
        resp.release()
    try:
        err = json.loads(raw)
    except ValueError:
        err = None
    if isinstance(err, dict) and isinstance(err.get("error"), dict):
        raise UpstreamEnvelope(resp.status, err, resp.headers.get("Retry-After"))
    g.metrics.upstream_errors.labels(client.name, "bad_response").inc()
    raise UpstreamError(f"{client.name} answered {resp.status} without an error envelope", code="bad_upstream_response")


@router.get("/v1/audio/voices", summary="The voices of every tts model (or of one: ?model=)")
async def voices(request: Request, model: str | None = Query(None, description="Only this model's voices.")) -> dict[str, Any]:
    g = gw(request)
    rid = request_id_of(request)
    specs = [g.access.spec(model, FAMILY)] if model else [m for m in g.catalog.models if m.family == FAMILY]
    if not specs:
        return {"object": "list", "data": []}
    client = g.access.client(specs[0])
    listing = await client.request("GET", "/v1/audio/voices", params={"model": model} if model else None,
                                   timeout_s=10, request_id=rid)
    by_model = {entry["model"]: entry for entry in listing.get("data", [])}
    return {"object": "list", "data": [by_model[s.id] for s in specs if s.id in by_model]}
