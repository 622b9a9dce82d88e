"""What a job task is: one small adapter per task, on this base.

A task names the model family it uses and the kinds of input it reads, validates its options at submit
time, turns one input into one JSON result (through ``ctx.infer``, which is the only way to reach a
service: the bulk lane, the job's concurrency, the yield to interactive traffic, and the pause on an
unavailable service all live there), and shapes results for the API and the CSV export. Videos are cut
into keyframes here, once, for every image task.

``ctx.infer(call)`` holds the task's model (``ModelAccess.hold`` in the bulk lane) and awaits
``call(upstream)`` inside the hold: ``upstream.request(...)`` takes the arguments of
``ModelHostClient.request``. A call may be made more than once (after a pause for an unavailable
service), so it must not consume anything it is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, Awaitable, Callable, ClassVar, Protocol

from modelhost.catalog import ModelSpec

from ...access import Upstream
from ..kinds import TASK_KINDS
from ..media import extract_keyframes


class ItemFailed(Exception):
    """The item's final error (recorded; the job goes on)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Context(Protocol):
    """What the runner gives a task while it works on one item."""

    settings: Any  # JobSettings
    request_timeout_s: float

    async def infer(self, call: Callable[[Upstream], Awaitable[Any]], *, timeout_s: float | None = None) -> Any: ...

    async def cached(self, key: str, compute: Callable[[], Awaitable[Any]]) -> Any: ...

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def scratch(self) -> Any: ...  # a fresh temporary folder (pathlib.Path), removed after the item


class Task:
    name: ClassVar[str]
    family: ClassVar[str]
    kinds: ClassVar[frozenset[str]]
    csv_columns: ClassVar[tuple[str, ...]]

    def __init__(self, model: str, params: dict[str, Any], spec: ModelSpec) -> None:
        self.model = model
        self.params = params
        self.spec = spec

    @classmethod
    def parse_params(cls, raw: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
        """The task's options from the request, validated (400 on bad input). Default: none."""
        return {}

    def key_params(self) -> dict[str, Any]:
        """The options that change an item's result (the cache key); default: all of them."""
        return self.params

    def key_prefix(self) -> str:
        digest = hashlib.sha256(json.dumps(self.key_params(), sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.name}:{self.model}:{digest}"

    async def image(self, ctx: Context, data: bytes) -> dict[str, Any]:
        raise ItemFailed("unsupported_input", f"the {self.name} task does not read images")

    async def video(self, ctx: Context, path: str) -> dict[str, Any]:
        raise ItemFailed("unsupported_input", f"the {self.name} task does not read videos")

    async def audio(self, ctx: Context, path: str) -> dict[str, Any]:
        raise ItemFailed("unsupported_input", f"the {self.name} task does not read audio")

    def finish(self, results: list[tuple[int, Any]]) -> tuple[dict[str, Any] | None, list[tuple[int, str, int]]]:
        """The job's closing step over every done item's result: (summary, people rows). Runs in a thread;
        only called when ``wants_results_at_finish``. Default: none."""
        return None, []

    def wants_results_at_finish(self) -> bool:
        return False

    def public(self, result: dict[str, Any], people: dict[str, int], *, embeddings: bool) -> dict[str, Any]:
        """A stored result as the API shows it (people labels added, bulky fields dropped)."""
        return result

    def csv_rows(self, result: dict[str, Any], people: dict[str, int]) -> list[dict[str, Any]]:
        return [{}]


class ImageTask(Task):
    """A task that works on images; a video is its keyframes, each treated as an image."""

    kinds = TASK_KINDS["caption"]

    async def video(self, ctx: Context, path: str) -> dict[str, Any]:
        s = ctx.settings
        info, frames = await ctx.in_thread(
            lambda: extract_keyframes(path, threshold=s.jobs_scene_threshold, per_minute=s.jobs_keyframes_per_minute,
                                      floor=s.jobs_keyframes_floor, min_spacing_s=s.jobs_keyframe_min_spacing_s))
        prefix = self.key_prefix()

        async def one(jpeg: bytes) -> dict[str, Any]:
            key = f"{prefix}:frame:{hashlib.sha256(jpeg).hexdigest()}"
            return await ctx.cached(key, lambda: self.image(ctx, jpeg))

        results = await asyncio.gather(*(one(f.jpeg) for f in frames))
        return {
            "duration_s": info.duration_s, "width": info.width, "height": info.height,
            "keyframes": [{"t_s": f.t_s, "scene_score": f.score, **r} for f, r in zip(frames, results)],
        }
