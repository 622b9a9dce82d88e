"""Decoding uploads into RGB images, with every bad input mapped to its 4xx."""

from __future__ import annotations

from PIL import Image, ImageOps

from modelhost.errors import BadRequest
from modelhost.images import CORRUPT, open_image, plan_decode


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, max_decode_bytes: int,
                 param: str) -> Image.Image:
    """Bytes → an upright RGB image no longer than ``max_side`` on either side.

    400 ``corrupt_image``: empty or truncated; 413: too many bytes or pixels, or a canvas over
    ``max_decode_bytes`` (checked from the header, before the pixels are decoded; JPEG is decoded reduced,
    ``modelhost.images.plan_decode``); 415: not an image Pillow can read. ``param`` names the upload
    (``file.3``). Scaled down before it is turned upright and converted, so only the decoded canvas is ever
    full size."""
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param)
    try:
        plan_decode(image, max_side=max_side, max_decode_bytes=max_decode_bytes)
        image.load()
        if image.mode in ("1", "P", "PA"):  # scaled in RGB(A), not with the nearest palette entry
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    except CORRUPT as e:
        raise BadRequest(f"the image could not be decoded (truncated or corrupt): {e}", param=param,
                         code="corrupt_image")
    return image
