"""transcribe: the text of every audio file and of every video's audio track (asr-svc's POST
/v1/transcriptions). The audio is decoded here to 16 kHz mono WAV pieces of at most
``jobs_audio_chunk_s`` seconds, so a two-hour recording never becomes one upload; segment times are
shifted back to the whole file's clock."""

from __future__ import annotations

import shutil
from typing import Any

from modelhost.catalog import ModelSpec
from modelhost.families import asr

from ..kinds import TASK_KINDS
from ..media import extract_audio
from .base import Context, Task

JOB_OPTIONS = ("language", "prompt")


class TranscribeTask(Task):
    name = "transcribe"
    family = asr.FAMILY
    kinds = TASK_KINDS["transcribe"]
    csv_columns = ("start_s", "end_s", "text")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        """The asr family's options (its limits and codes, as at the route); the ones set, as stored."""
        options = asr.options({k: raw.get(k) for k in JOB_OPTIONS})
        return options.model_dump(include=set(JOB_OPTIONS), exclude_none=True)

    async def audio(self, ctx: Context, path: str) -> dict[str, Any]:
        folder = ctx.scratch()
        timeout_s = ctx.request_timeout_s + 3 * ctx.settings.jobs_audio_chunk_s
        options = asr.options(self.params)
        try:
            pieces = await ctx.in_thread(lambda: extract_audio(path, folder, chunk_s=ctx.settings.jobs_audio_chunk_s))
            if not pieces:
                return {"duration_s": 0.0, "language": None, "text": "", "segments": [], "audio": False}
            texts, segments, language, duration = [], [], None, 0.0
            for offset, wav in pieces:
                data = await ctx.in_thread(wav.read_bytes)
                body = await ctx.infer(
                    lambda upstream: asr.transcribe(upstream, model=self.model, audio=data, options=options,
                                                    timeout_s=timeout_s),
                    timeout_s=timeout_s)
                language = language or body.language
                duration = offset + body.duration
                if body.text.strip():
                    texts.append(body.text.strip())
                for s in body.segments:
                    segments.append({"start_s": round(offset + s.start, 3), "end_s": round(offset + s.end, 3),
                                     "text": s.text.strip()})
            return {"duration_s": round(duration, 3), "language": language, "text": " ".join(texts),
                    "segments": segments, "audio": True}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def video(self, ctx: Context, path: str) -> dict[str, Any]:
        return await self.audio(ctx, path)

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        return [{"start_s": s["start_s"], "end_s": s["end_s"], "text": s["text"]} for s in result["segments"]] or [{"text": result["text"]}]
