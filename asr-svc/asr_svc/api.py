"""Transcription routes: validate → decode → lease → infer → response. Nothing else lives here.

Everything a request can get wrong is checked before the model is leased: the model (404), the options by
the family's contract (``modelhost.families.asr``: language, prompt, 400; the form's types and temperature's
range, 422), what the model can do (translation, languages: 400), then the audio, decoded here in the threadpool (400, 413,
415). Audio below the silence level gets an empty transcript without running the model: Whisper invents
words on silence ("Thank you."), and an empty transcript is the truth.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from modelhost.app import host
from modelhost.decodes import DecodeSlots
from modelhost.errors import BadRequest, error_responses
from modelhost.families import asr
from modelhost.families.asr import AudioInfo, Timings, TranscriptionForm, TranscriptionResponse

from .audio import decode_audio
from .backends import capabilities
from .items import TranscribeItem, empty_transcript

router = APIRouter(tags=["speech-to-text"])

_ERRORS = error_responses(400, 404, 413, 415, 422, 429, 503, 504)


@router.post("/v1/transcriptions", response_model=TranscriptionResponse, responses=_ERRORS)
async def transcribe(
    request: Request,
    file: Annotated[UploadFile, File(description="The audio: wav, flac, mp3, ogg/opus, m4a/aac, webm, mp4, ...")],
    form: Annotated[TranscriptionForm, Form()],
) -> TranscriptionResponse:
    return await _run(request, "transcribe", file, form)


@router.post("/v1/translations", response_model=TranscriptionResponse, responses=_ERRORS,
             description="Into English text; ``language`` is the spoken (source) language.")
async def translate(
    request: Request,
    file: Annotated[UploadFile, File(description="The audio, in any language the model knows.")],
    form: Annotated[TranscriptionForm, Form()],
) -> TranscriptionResponse:
    return await _run(request, "translate", file, form)


async def _run(request: Request, task: asr.Task, file: UploadFile, form: TranscriptionForm) -> TranscriptionResponse:
    h = host(request)
    settings = h.settings
    model = form.model
    spec = h.runtime.entry(model).spec  # 404 for an unknown model before reading the upload
    options = asr.options(form.model_dump(include={"language", "prompt", "temperature", *asr.GUARD_OPTIONS}))
    caps = capabilities(spec)
    if task == "translate" and not caps.translate:
        raise BadRequest(f"model {model} does not translate (it transcribes {_langs(caps.languages)} only)",
                         param="model", code="translation_not_supported")
    code = options.language
    if code is not None and code not in caps.languages:
        raise BadRequest(f"model {model} transcribes {_langs(caps.languages)} only, not {code!r}",
                         param="language", code="unsupported_language")
    if code is None and not caps.detects_language:
        code = next(iter(caps.languages))
    t0 = time.perf_counter()
    decodes: DecodeSlots = request.app.state.decodes
    async with decodes.turn():  # the decode memory bound: read and decode in a turn
        data = await file.read(settings.max_upload_bytes + 1)
        audio = await run_in_threadpool(decode_audio, data, max_bytes=settings.max_upload_bytes,
                                        max_duration_s=settings.max_audio_s, silence_dbfs=settings.silence_dbfs)
        del data
    t1 = time.perf_counter()
    word_timestamps = form.word_timestamps
    item = TranscribeItem(audio=audio.pcm, task=task, language=code, prompt=options.prompt,
                          temperature=options.temperature, word_timestamps=word_timestamps,
                          **options.model_dump(include=set(asr.GUARD_OPTIONS)))
    async with h.runtime.lease(model) as lease:
        if audio.silent:
            result: dict[str, Any] = empty_transcript(audio.duration_s, code)
            if not word_timestamps:
                result["words"] = None
        else:
            result = await lease.infer(item)
    t2 = time.perf_counter()
    return TranscriptionResponse(
        model=model, task=task, **result,
        audio=AudioInfo(container=audio.container, codec=audio.codec, sample_rate=audio.source_rate,
                        channels=audio.source_channels, silent=audio.silent,
                        peak_dbfs=None if math.isinf(audio.peak_dbfs) else round(audio.peak_dbfs, 1)),
        timings=Timings(decode_ms=(t1 - t0) * 1000, inference_ms=(t2 - t1) * 1000),
    )


def _langs(codes: frozenset[str]) -> str:
    return ", ".join(sorted(codes)) if len(codes) <= 5 else f"{len(codes)} languages"
