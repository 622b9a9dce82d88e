"""The header checks every uploaded image gets, at the gateway and in each service that decodes images:
empty, too many bytes, not an image, too many pixels, a header that cannot be read — each its own 4xx,
before a single pixel is decoded.

Pillow is imported here, so only components that read images (and depend on Pillow) import this module;
the rest of modelhost stays free of it.
"""

from __future__ import annotations

import io
import struct
import warnings

from PIL import Image, UnidentifiedImageError

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

CORRUPT = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, struct.error)
"""What Pillow raises for a file in a format it knows whose bytes are broken (truncated, corrupt): its
plugins raise these from open() (a truncated WebP or JPEG header) as well as from load(), and they are
not consistent about which type."""


def open_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "file") -> Image.Image:
    """The image opened lazily (its header read, its pixels not decoded), or the 4xx that fits:
    400 empty or unreadable header, 413 too many bytes or pixels, 415 not an image Pillow reads."""
    if not data:
        raise BadRequest("the image is empty", param=param, code="empty_file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image has {len(data)} bytes; the limit is {max_bytes}", param=param)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMediaType("the file is not an image in a format we read (JPEG, PNG, WebP, GIF, BMP, TIFF)",
                                       param=param)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise PayloadTooLarge("the image has too many pixels", param=param, code="too_many_pixels")
        except CORRUPT as e:  # after UnidentifiedImageError, which is an OSError
            raise BadRequest(f"the image could not be read (truncated or corrupt): {e}", param=param, code="corrupt_image")
    w, h = image.size
    if w * h > max_pixels:
        image.close()
        raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", param=param,
                              code="too_many_pixels")
    return image
