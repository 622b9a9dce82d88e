"""Decoding uploads into upright RGB arrays, with every bad input mapped to its 4xx."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# What Pillow raises for a file in a format it knows whose bytes are broken (truncated, corrupt): its
# plugins raise these from open() (a truncated WebP or JPEG header) as well as from load(), and they are
# not consistent about which type.
_CORRUPT = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, struct.error)


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray
    """RGB uint8 (height, width, 3), upright, scaled so its longer side is at most ``max_side``."""
    width: int
    """Width of the upright image as uploaded (before scaling)."""
    height: int
    scale: float
    """``pixels`` size / uploaded size: divide coordinates in ``pixels`` by it to get uploaded pixels."""


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, param: str = "file") -> Decoded:
    """Bytes → an upright RGB array no longer than ``max_side`` on either side.

    400: empty or truncated; 413: too many bytes or pixels (checked from the header, before the pixels are
    decoded); 415: not an image Pillow can read."""
    if not data:
        raise BadRequest("the file is empty", param=param, code="empty_file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the file has {len(data)} bytes; the limit is {max_bytes}", param=param)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMediaType("the file is not an image in a format we read (JPEG, PNG, WebP, GIF, BMP, TIFF)", param=param)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge("the image has too many pixels", param=param, code="too_many_pixels")
        except _CORRUPT as e:  # after UnidentifiedImageError, which is an OSError
            raise BadRequest(f"the image could not be read (truncated or corrupt): {e}", param=param, code="corrupt_image")
    w, h = image.size
    if w * h > max_pixels:
        raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", param=param, code="too_many_pixels")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    except _CORRUPT as e:
        raise BadRequest(f"the image could not be decoded (truncated or corrupt): {e}", param=param, code="corrupt_image")
    width, height = image.size
    if max(width, height) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return Decoded(pixels=pixels, width=width, height=height, scale=max(image.size) / max(width, height))


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG")
    return buf.getvalue()
