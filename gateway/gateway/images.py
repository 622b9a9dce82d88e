"""Cheap checks on an uploaded image before it is sent on: size, format and pixel count, read
from the header only. The service decodes fully and reports truncation itself."""

from __future__ import annotations

from typing import Iterable

from modelhost.images import open_image


def check_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "file") -> str:
    """Return the image format (e.g. ``"JPEG"``) or raise the 4xx that fits."""
    with open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param) as im:
        return im.format or "unknown"


def check_images(parts: Iterable[tuple[str, bytes]], *, max_bytes: int, max_pixels: int) -> None:
    """``check_image`` on each ``(param, bytes)``: the first bad one's 4xx, naming it."""
    for param, data in parts:
        check_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param)
