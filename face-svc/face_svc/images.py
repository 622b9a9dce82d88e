"""Decoding uploads into upright RGB arrays, with every bad input mapped to its 4xx."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from modelhost.images import decode_rgb


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
    up = decode_rgb(data, max_bytes=max_bytes, max_pixels=max_pixels, max_side=max_side,
                    max_decode_bytes=max_decode_bytes, param=param, resample=Image.Resampling.BILINEAR)
    pixels = np.asarray(up.image, dtype=np.uint8)
    width, height = up.width, up.height
    return Decoded(pixels=pixels, width=width, height=height, scale=max(up.image.size) / max(width, height))


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()
