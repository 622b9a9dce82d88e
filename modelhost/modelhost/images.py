"""The header checks every uploaded image gets, at the gateway and in each service that decodes images:
empty, too many bytes, not an image, too many pixels, a header that cannot be read — each its own 4xx,
before a single pixel is decoded. ``plan_decode`` then bounds what decoding will allocate.

The memory bound of one decode: a header may claim any size (a 3.7 KB JPEG whose header says 7000x7000
decodes into a 147 MB canvas), so the canvas is sized before decoding: JPEG is decoded reduced (DCT
scaling, 1/2 to 1/8) to no less than the size the service scales to anyway, and the canvas that remains,
counted at 4 bytes a pixel (Pillow keeps RGB in four), must fit ``max_decode_bytes`` (413
``decode_too_large``). A service decodes, then scales down, then converts: one decode holds at most that
canvas plus one no larger than it, and a service runs at most its ``max_concurrent_decodes`` at once
(``modelhost.decodes``).

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


BYTES_PER_PIXEL = 4
"""What one decoded pixel is counted at: Pillow keeps RGB, RGBA, CMYK and YCbCr in four bytes, and the
single-byte modes (L, P) become four when converted to RGB."""


def plan_decode(image: Image.Image, *, max_side: int, max_decode_bytes: int, param: str = "file") -> None:
    """Before ``image`` (opened by ``open_image``, not loaded) is decoded: ask for a reduced decode where the
    format has one (JPEG: the smallest DCT scale whose image is still at least ``max_side`` on its longer
    side), then check the canvas the decode will allocate against ``max_decode_bytes`` (413
    ``decode_too_large``, nothing decoded). ``image.size`` is the reduced size afterwards."""
    try:
        image.draft("RGB", (max_side, max_side))
    except CORRUPT as e:
        raise BadRequest(f"the image could not be read (truncated or corrupt): {e}", param=param, code="corrupt_image")
    w, h = image.size
    if w * h * BYTES_PER_PIXEL > max_decode_bytes:
        image.close()
        raise PayloadTooLarge(f"the image decodes to {w}x{h} pixels ({w * h * BYTES_PER_PIXEL} bytes); one decode may "
                              f"take {max_decode_bytes} bytes", param=param, code="decode_too_large")
