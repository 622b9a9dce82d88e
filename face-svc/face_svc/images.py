"""Decoding uploads into upright RGB arrays, with every bad input mapped to its 4xx."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from modelhost.errors import BadRequest
from modelhost.images import CORRUPT, open_image, plan_decode


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray
    """RGB uint8 (height, width, 3), upright, scaled so its longer side is at most ``max_side``."""
    width: int
    """Width of the upright image as uploaded (before scaling)."""
    height: int
    scale: float
    """``pixels`` size / uploaded size: divide coordinates in ``pixels`` by it to get uploaded pixels."""


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, max_decode_bytes: int,
                 param: str = "file") -> Decoded:
    """Bytes → an upright RGB array no longer than ``max_side`` on either side.

    400: empty or truncated; 413: too many bytes or pixels, or a canvas over ``max_decode_bytes`` (checked from
    the header, before the pixels are decoded; JPEG is decoded reduced, ``modelhost.images.plan_decode``);
    415: not an image Pillow can read. Scaled down before it is turned upright and converted, so only the
    decoded canvas is ever full size."""
    image = open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param)
    width, height = image.size
    try:
        if image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8):  # turned a quarter: upright is h x w
            width, height = height, width
        plan_decode(image, max_side=max_side, max_decode_bytes=max_decode_bytes, param=param)
        image.load()
        if image.mode in ("1", "P", "PA"):  # scaled in RGB(A), not with the nearest palette entry
            image = image.convert("RGBA" if image.has_transparency_data else "RGB")
        if max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    except CORRUPT as e:
        raise BadRequest(f"the image could not be decoded (truncated or corrupt): {e}", param=param, code="corrupt_image")
    pixels = np.asarray(image, dtype=np.uint8)
    return Decoded(pixels=pixels, width=width, height=height, scale=max(image.size) / max(width, height))


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()
