"""Decoding uploads into RGB images, with every bad input mapped to its 4xx."""

from __future__ import annotations

from PIL import Image, ImageOps

from modelhost.errors import BadRequest
from modelhost.images import CORRUPT, open_image


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> Image.Image:
    """Bytes → an upright RGB image no longer than ``max_side`` on either side.

    400: empty or truncated; 413: too many bytes or pixels (checked from the header, before the
    pixels are decoded); 415: not an image Pillow can read."""
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param="file")
    try:
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when it can
        image.load()
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    except CORRUPT as e:
        raise BadRequest(f"the image could not be decoded (truncated or corrupt): {e}", param="file", code="corrupt_image")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image
