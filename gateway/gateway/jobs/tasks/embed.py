"""embed: one vector per image and per video keyframe (the embed family's image call,
``modelhost.families.embed``), the input of photo search (``gateway.search``).

A result stores its vector as float16 base64 (``search.codec``): the result cache keys it by content like
any other, so the same photo in another job is not embedded again, and the search index is rebuilt from
these results alone. ``GET /v1/jobs/{id}/results?embeddings=true`` shows it as a list of floats."""

from __future__ import annotations

from typing import Any

from modelhost.catalog import ModelSpec
from modelhost.families import embed

from ...search.codec import from_f16_b64, to_f16_b64
from ..kinds import TASK_KINDS
from .base import Context, ImageTask


class EmbedTask(ImageTask):
    name = "embed"
    family = embed.FAMILY
    kinds = TASK_KINDS["embed"]
    csv_columns = ("t_s", "dim")

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        embed.check_modality(spec.id, spec.options or {}, "image")  # 400 unsupported_input: a text-only model
        return {}

    async def image(self, ctx: Context, data: bytes) -> dict[str, Any]:
        reply = await ctx.infer(lambda upstream: embed.embed_images(upstream, self.model, [data],
                                                                    timeout_s=ctx.request_timeout_s))
        return {"dim": reply.dim, "vector": to_f16_b64(reply.embeddings[0])}

    def public(self, result: dict[str, Any], people: dict[str, int], *, embeddings: bool) -> dict[str, Any]:
        def shown(part: dict[str, Any]) -> dict[str, Any]:
            out = {k: v for k, v in part.items() if k != "vector"}
            if embeddings and part.get("vector"):
                out["embedding"] = [round(float(x), 5) for x in from_f16_b64(part["vector"])]
            return out

        if "keyframes" in result:
            return {**result, "keyframes": [shown(k) for k in result["keyframes"]]}
        return shown(result)

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        if "keyframes" in result:
            return [{"t_s": k["t_s"], "dim": k.get("dim")} for k in result["keyframes"]] or [{}]
        return [{"dim": result.get("dim")}]
