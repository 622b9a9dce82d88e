"""What a caption backend receives and returns, shared by the HTTP side and the worker.

The HTTP side decodes the upload, applies its EXIF orientation and converts it to RGB before it builds a
``CaptionItem``; the worker pickles items across the process boundary, so this module imports nothing
heavy (no torch, no transformers).

A backend returns one result per item: a plain dict ``{"caption": str, "tokens": int}``, where
``tokens`` is the number of tokens the model generated for that caption (the end-of-sequence token
included when it was reached), or a ``PromptFillsContext`` for an item whose prompt alone fills the
model's context: nothing is generated for it and the route answers 400 ``prompt_too_long``. That is a
value, not an exception, because the worker reports whatever a backend raises as a failed inference
(500); the item's batch-mates are captioned as usual.

A backend never asks for more new tokens than its model's context holds after the prompt (it clamps
``max_new_tokens`` to that room), so a valid request never overflows a position table.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class CaptionItem:
    image: Image.Image
    """RGB, already EXIF-transposed."""
    prompt: str | None = None
    """Text that conditions the caption (a prefix for BLIP, a question or instruction for the others);
    ``None`` means the model's default."""
    max_new_tokens: int | None = None
    """Most tokens to generate for this item; ``None`` means the model's ``max_new_tokens`` option."""


@dataclass(frozen=True)
class PromptFillsContext:
    """What a backend returns for an item whose prompt leaves no room in the model's context."""

    prompt_tokens: int
    """Positions the prompt takes: its tokens with the model's own (start token, image tokens)."""
    context_tokens: int
    """Positions the model's text decoder has: prompt and caption together."""
