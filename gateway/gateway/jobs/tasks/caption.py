"""caption: one caption per image, per video keyframe (caption-svc's POST /v1/captions)."""

from __future__ import annotations

from typing import Any

import aiohttp

from modelhost.catalog import ModelSpec
from modelhost.client import ModelHostClient
from modelhost.errors import BadRequest

from .base import Context, ImageTask

MAX_PROMPT_CHARS = 2000


class CaptionTask(ImageTask):
    name = "caption"
    family = "caption"
    csv_columns = ("t_s", "caption")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        out: dict[str, Any] = {}
        prompt = raw.get("prompt")
        if prompt not in (None, ""):
            if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
                raise BadRequest(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters", param="prompt")
            out["prompt"] = prompt
        mnt = raw.get("max_new_tokens")
        if mnt not in (None, ""):
            try:
                mnt = int(mnt)
            except (TypeError, ValueError):
                raise BadRequest("max_new_tokens must be an integer", param="max_new_tokens")
            if not 1 <= mnt <= 512:
                raise BadRequest("max_new_tokens must be between 1 and 512", param="max_new_tokens")
            out["max_new_tokens"] = mnt
        return out

    async def image(self, ctx: Context, data: bytes) -> dict[str, Any]:
        async def call(client: ModelHostClient) -> Any:
            form = aiohttp.FormData()
            form.add_field("file", data, filename="image", content_type="application/octet-stream")
            form.add_field("model", self.model)
            if "prompt" in self.params:
                form.add_field("prompt", self.params["prompt"])
            if "max_new_tokens" in self.params:
                form.add_field("max_new_tokens", str(self.params["max_new_tokens"]))
            return await client.request("POST", "/v1/captions", data=form, timeout_s=ctx.request_timeout_s)

        body = await ctx.infer(call)
        return {"caption": body["caption"], "tokens": body.get("tokens"), "width": body.get("width"), "height": body.get("height")}

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        if "keyframes" in result:
            return [{"t_s": k["t_s"], "caption": k["caption"]} for k in result["keyframes"]] or [{}]
        return [{"caption": result["caption"]}]
