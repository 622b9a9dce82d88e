"""Cheap checks on an uploaded image before it is sent on: size, format and pixel count, read
from the header only. The service decodes fully and reports truncation itself."""

from __future__ import annotations

import io
import warnings
from typing import Iterable

from PIL import Image, UnidentifiedImageError

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


def check_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "file") -> str:
    """Return the image format (e.g. ``"JPEG"``) or raise the 4xx that fits."""
    if not data:
        raise BadRequest("the image is empty", param=param, code="empty_file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image has {len(data)} bytes; the limit is {max_bytes}", param=param)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                fmt = im.format or "unknown"
        except UnidentifiedImageError:
            raise UnsupportedMediaType("the file is not an image in a format we read (JPEG, PNG, WebP, GIF, BMP, TIFF)", param=param)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge("the image has too many pixels", param=param, code="too_many_pixels")
        except (OSError, SyntaxError, ValueError) as e:
            raise BadRequest(f"the image header could not be read: {e}", param=param, code="corrupt_image")
    if w * h > max_pixels:
        raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", param=param, code="too_many_pixels")
    return fmt


def check_images(parts: Iterable[tuple[str, bytes]], *, max_bytes: int, max_pixels: int) -> None:
    """``check_image`` on each ``(param, bytes)``: the first bad one's 4xx, naming it."""
    for param, data in parts:
        check_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param)
