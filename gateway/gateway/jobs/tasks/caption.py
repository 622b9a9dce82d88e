"""caption: one caption per image, per video keyframe (the caption family's call, ``modelhost.families.caption``)."""

from __future__ import annotations

from typing import Any

from modelhost.catalog import ModelSpec
from modelhost.families import caption, validated

from .base import Context, ImageTask


class CaptionTask(ImageTask):
    name = "caption"
    family = caption.FAMILY
    csv_columns = ("t_s", "caption")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        options = validated(caption.CaptionOptions, {k: raw[k] for k in caption.CaptionOptions.model_fields if k in raw})
        return options.model_dump(exclude_none=True)

    async def image(self, ctx: Context, data: bytes) -> dict[str, Any]:
        options = caption.CaptionOptions(**self.params)
        reply = await ctx.infer(lambda upstream: caption.caption(upstream, self.model, data, options,
                                                                 timeout_s=ctx.request_timeout_s))
        return {"caption": reply.caption, "tokens": reply.tokens, "width": reply.width, "height": reply.height}

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        if "keyframes" in result:
            return [{"t_s": k["t_s"], "caption": k["caption"]} for k in result["keyframes"]] or [{}]
        return [{"caption": result["caption"]}]
