"""Transcription routes: validate → decode → lease → infer → response. Nothing else lives here.

Everything a request can get wrong is checked before the model is leased: the model (404), what it can do
(translation, languages: 400), the prompt (400), then the audio, decoded here in the threadpool (400, 413,
415). Audio below the silence level gets an empty transcript without running the model: Whisper invents
words on silence ("Thank you."), and an empty transcript is the truth.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from modelhost.app import host
from modelhost.errors import BadRequest

from .audio import decode_audio
from .backends import capabilities
from .items import Task, TranscribeItem, empty_transcript
from .languages import language_code
from .schemas import AudioInfo, Timings, TranscriptionResponse

router = APIRouter(tags=["speech-to-text"])


@router.post("/v1/transcriptions", response_model=TranscriptionResponse)
async def transcribe(
    request: Request,
    file: UploadFile = File(..., description="The audio: wav, flac, mp3, ogg/opus, m4a/aac, webm, mp4, ..."),
    model: str = Form(..., description="Catalog id of an asr model."),
    language: str | None = Form(None, description="ISO-639-1 code of the spoken language; default: detect."),
    prompt: str | None = Form(None, description="Text that conditions the transcript (spellings, style)."),
    temperature: float | None = Form(None, ge=0.0, le=1.0, description="0 (default): greedy with fallback."),
    word_timestamps: bool = Form(False, description="Return word-level timestamps."),
) -> TranscriptionResponse:
    return await _run(request, "transcribe", file, model, language, prompt, temperature, word_timestamps)


@router.post("/v1/translations", response_model=TranscriptionResponse)
async def translate(
    request: Request,
    file: UploadFile = File(..., description="The audio, in any language the model knows."),
    model: str = Form(..., description="Catalog id of an asr model that translates."),
    language: str | None = Form(None, description="ISO-639-1 code of the spoken (source) language; default: detect."),
    prompt: str | None = Form(None, description="English text that conditions the translation."),
    temperature: float | None = Form(None, ge=0.0, le=1.0),
    word_timestamps: bool = Form(False),
) -> TranscriptionResponse:
    return await _run(request, "translate", file, model, language, prompt, temperature, word_timestamps)


async def _run(request: Request, task: Task, file: UploadFile, model: str, language: str | None, prompt: str | None,
               temperature: float | None, word_timestamps: bool) -> TranscriptionResponse:
    h = host(request)
    settings = h.settings
    spec = h.runtime.entry(model).spec  # 404 for an unknown model before reading the upload
    caps = capabilities(spec)
    if task == "translate" and not caps.translate:
        raise BadRequest(f"model {model} does not translate (it transcribes {_langs(caps.languages)} only)",
                         param="model", code="translation_not_supported")
    code = None
    if language:
        code = language_code(language)
        if code is None:
            raise BadRequest(f"language {language!r} is not a language code Whisper knows (ISO-639-1, e.g. 'en')",
                             param="language", code="unsupported_language")
        if code not in caps.languages:
            raise BadRequest(f"model {model} transcribes {_langs(caps.languages)} only, not {code!r}",
                             param="language", code="unsupported_language")
    elif not caps.detects_language:
        code = next(iter(caps.languages))
    if prompt is not None and len(prompt) > settings.max_prompt_chars:
        raise BadRequest(f"prompt is longer than {settings.max_prompt_chars} characters", param="prompt")
    t0 = time.perf_counter()
    data = await file.read(settings.max_upload_bytes + 1)
    audio = await run_in_threadpool(decode_audio, data, max_bytes=settings.max_upload_bytes,
                                    max_duration_s=settings.max_audio_s, silence_dbfs=settings.silence_dbfs)
    del data
    t1 = time.perf_counter()
    item = TranscribeItem(audio=audio.pcm, task=task, language=code, prompt=prompt or None,
                          temperature=temperature, word_timestamps=word_timestamps)
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
