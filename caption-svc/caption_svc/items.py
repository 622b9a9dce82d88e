"""What a caption backend receives and returns, shared by the HTTP side and the worker.

The HTTP side decodes the upload, applies its EXIF orientation and converts it to RGB before it builds a
``CaptionItem``; the worker pickles items across the process boundary, so this module imports nothing
heavy (no torch, no transformers).

A backend returns one plain dict per item: ``{"caption": str, "tokens": int}``, where ``tokens`` is the
number of tokens the model generated for that caption (the end-of-sequence token included when it was
reached).
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
