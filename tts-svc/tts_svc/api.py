"""TTS routes: parse → lease → synthesise sentence by sentence → stream. Nothing else lives here.

    POST /v1/audio/speech    OpenAI's speech request; the audio streams as each sentence is made
    GET  /v1/audio/voices    the voices of every model of this service (``?model=`` for one), with
                             OpenAI's voice names as aliases

Every check runs before the response starts; the first sentence is synthesised before it starts too, so
a model that cannot speak answers with an error envelope, not a cut-off stream. Past the first chunk an
error can only end the stream early (the status line is gone); it is logged with the request id.
"""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from modelhost.app import host
from modelhost.errors import BadRequest, error_responses, request_id_of
from modelhost.families import tts
from modelhost.families.tts import ModelVoices, VoiceList

from .encoding import OUTPUT_SAMPLE_RATE, Encoder, content_type
from .schemas import ServiceSpeechRequest
from .sentences import split_sentences
from .synthesis import SpeechStream
from .voices import model_voices

router = APIRouter(tags=["speech"])
log = logging.getLogger(__name__)


def _model_voices(request: Request, model: str) -> ModelVoices:
    h = host(request)
    spec = h.runtime.entry(model).spec  # 404 for a model not in this service's catalog
    return model_voices(spec, h.settings.cache_dir)


@router.get("/v1/audio/voices", response_model=VoiceList, responses=error_responses(404))
async def list_voices(request: Request, model: str | None = Query(None, description="Only this model's voices.")) -> VoiceList:
    models = [model] if model else list(host(request).runtime.entries)
    return VoiceList(data=[_model_voices(request, m) for m in models])


@router.post("/v1/audio/speech", response_class=StreamingResponse,
             responses={200: {"content": {content_type(f): {} for f in tts.RESPONSE_FORMATS}},
                        **error_responses(400, 404, 413, 422, 429, 503, 504)})
async def speech(body: ServiceSpeechRequest, request: Request) -> StreamingResponse:
    h = host(request)
    settings = h.settings
    voices = _model_voices(request, body.model)
    tts.check(body, max_input_chars=settings.max_input_chars)
    voice = voices.voice(body.voice)
    if body.language and voices.languages and body.language not in voices.languages:
        raise BadRequest(f"language must be one of {', '.join(voices.languages)}", param="language",
                         code="unsupported_language")
    spec = h.runtime.entry(body.model).spec
    sentences = split_sentences(body.input, max_chars=int(spec.options.get("max_sentence_chars", settings.max_sentence_chars)))

    resources = contextlib.AsyncExitStack()
    try:
        lease = await resources.enter_async_context(h.runtime.lease(body.model))
        stream = SpeechStream(lease, sentences, voice=voice, speed=body.speed, language=body.language,
                              encoder=Encoder(body.response_format), lookahead=settings.lookahead_sentences,
                              pause_s=settings.pause_s)
        chunks = stream.chunks()
        resources.push_async_callback(chunks.aclose)
        first = await anext(chunks, b"")  # the first sentence, or its error as an envelope
    except BaseException:
        await resources.aclose()
        raise

    rid = request_id_of(request)

    async def body_iter() -> AsyncIterator[bytes]:
        async with resources:
            if first:
                yield first
            try:
                async for chunk in chunks:
                    yield chunk
            except Exception:
                log.exception("speech stream for request %s ended early", rid)
                raise
            log.info("spoke %d sentence(s), %.2f s of audio, with %s (first audio after %.3f s)",
                     stream.stats.sentences, stream.stats.audio_s, body.model, stream.stats.first_audio_s or 0.0)

    headers = {"X-Sample-Rate": str(OUTPUT_SAMPLE_RATE), "X-Sentences": str(len(sentences)), "Cache-Control": "no-store"}
    return _ReleasingStreamingResponse(body_iter(), resources, media_type=content_type(body.response_format),
                                       headers=headers)


class _ReleasingStreamingResponse(StreamingResponse):
    """Releases the lease and the stream however the response ends: also when the client left before
    the body started, when the body iterator never runs its own cleanup."""

    def __init__(self, content: AsyncIterator[bytes], resources: contextlib.AsyncExitStack, **kwargs) -> None:  # noqa: ANN003
        super().__init__(content, **kwargs)
        self._resources = resources

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._resources.aclose()  # a no-op when the body already closed it
