"""Decoding uploads into RGB images, with every bad input mapped to its 4xx."""

from __future__ import annotations

from PIL import Image

from modelhost.images import decode_rgb


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, max_decode_bytes: int) -> Image.Image:
    """Bytes → an upright RGB image no longer than ``max_side``; each bad input its 4xx (``modelhost.images.decode_rgb``)."""
    return decode_rgb(data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side,
                      max_decode_bytes=max_decode_bytes, param="file").image
