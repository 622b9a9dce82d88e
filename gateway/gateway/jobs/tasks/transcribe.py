"""transcribe: the text of every audio file and of every video's audio track (asr-svc's POST
/v1/transcriptions). The audio is decoded here to 16 kHz mono WAV pieces of at most
``jobs_audio_chunk_s`` seconds, so a two-hour recording never becomes one upload; segment times are
shifted back to the whole file's clock."""

from __future__ import annotations

import shutil
from typing import Any

import aiohttp

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient
from modelhost.errors import BadRequest

from ..kinds import TASK_KINDS
from ..media import extract_audio
from .base import Context, Task


class TranscribeTask(Task):
    name = "transcribe"
    family = "asr"
    kinds = TASK_KINDS["transcribe"]
    csv_columns = ("start_s", "end_s", "text")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        out: dict[str, Any] = {}
        lang = raw.get("language")
        if lang not in (None, ""):
            if not isinstance(lang, str) or not 2 <= len(lang) <= 16:
                raise BadRequest("language must be an ISO-639-1 code such as 'en'", param="language")
            out["language"] = lang
        prompt = raw.get("prompt")
        if prompt not in (None, ""):
            if not isinstance(prompt, str) or len(prompt) > 2000:
                raise BadRequest("prompt must be a string of at most 2000 characters", param="prompt")
            out["prompt"] = prompt
        return out

    async def audio(self, ctx: Context, path: str) -> dict[str, Any]:
        folder = ctx.scratch()
        try:
            pieces = await ctx.in_thread(lambda: extract_audio(path, folder, chunk_s=ctx.settings.jobs_audio_chunk_s))
            if not pieces:
                return {"duration_s": 0.0, "language": None, "text": "", "segments": [], "audio": False}
            texts, segments, language, duration = [], [], None, 0.0
            for offset, wav in pieces:
                data = await ctx.in_thread(wav.read_bytes)
                body = await ctx.infer(self._call(data, ctx), timeout_s=ctx.request_timeout_s + 3 * ctx.settings.jobs_audio_chunk_s)
                language = language or body.get("language")
                duration = offset + float(body.get("duration") or 0.0)
                if body.get("text", "").strip():
                    texts.append(body["text"].strip())
                for s in body.get("segments", []):
                    segments.append({"start_s": round(offset + s["start"], 3), "end_s": round(offset + s["end"], 3),
                                     "text": s["text"].strip()})
            return {"duration_s": round(duration, 3), "language": language, "text": " ".join(texts),
                    "segments": segments, "audio": True}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def video(self, ctx: Context, path: str) -> dict[str, Any]:
        return await self.audio(ctx, path)

    def _call(self, data: bytes, ctx: Context):  # noqa: ANN202
        async def call(client: ModelHostClient) -> Any:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="audio.wav", content_type="audio/wav")
            form.add_field("model", self.model)
            if "language" in self.params:
                form.add_field("language", self.params["language"])
            if "prompt" in self.params:
                form.add_field("prompt", self.params["prompt"])
            return await client.request("POST", "/v1/transcriptions", data=form,
                                        timeout_s=ctx.request_timeout_s + 3 * ctx.settings.jobs_audio_chunk_s)
        return call

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        return [{"start_s": s["start_s"], "end_s": s["end_s"], "text": s["text"]} for s in result["segments"]] or [{"text": result["text"]}]
