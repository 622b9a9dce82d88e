"""Decoding uploads into RGB images, with every bad input mapped to its 4xx."""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# What Pillow raises for a file in a format it knows whose bytes are broken (truncated, corrupt). Its
# plugins raise these from open() (while parsing headers: a truncated WebP or JPEG header is an OSError
# there) as well as from load(), and they are not consistent about which type.
_CORRUPT = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, struct.error)


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int) -> Image.Image:
    """Bytes → an upright RGB image no longer than ``max_side`` on either side.

    400: empty or truncated; 413: too many bytes or pixels (checked from the header, before the
    pixels are decoded); 415: not an image Pillow can read."""
    if not data:
        raise BadRequest("the file is empty", param="file", code="empty_file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the file has {len(data)} bytes; the limit is {max_bytes}", param="file")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMediaType("the file is not an image in a format we read (JPEG, PNG, WebP, GIF, BMP, TIFF)", param="file")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge("the image has too many pixels", param="file", code="too_many_pixels")
        except _CORRUPT as e:  # after UnidentifiedImageError, which is an OSError
            raise BadRequest(f"the image could not be read (truncated or corrupt): {e}", param="file", code="corrupt_image")
    w, h = image.size
    if w * h > max_pixels:
        raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", param="file", code="too_many_pixels")
    try:
        image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when it can
        image.load()
        image = ImageOps.exif_transpose(image)
        image = image.convert("RGB")
    except _CORRUPT as e:
        raise BadRequest(f"the image could not be decoded (truncated or corrupt): {e}", param="file", code="corrupt_image")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image
