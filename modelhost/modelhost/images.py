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

from dataclasses import dataclass

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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
    try:
        check_pixels(*image.size, max_pixels=max_pixels, param=param)
    except PayloadTooLarge:
        image.close()
        raise
    return image


def check_pixels(width: int, height: int, *, max_pixels: int, param: str = "file") -> None:
    """413 ``too_many_pixels`` for a header claiming more than ``max_pixels``, or more than Pillow's own bomb limit
    (which ``open_image`` has Pillow enforce as it opens; a header read elsewhere is held to it here)."""
    pixels = width * height
    if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
        raise PayloadTooLarge("the image has too many pixels", param=param, code="too_many_pixels")
    if pixels > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height} = {pixels} pixels; the limit is {max_pixels}", param=param,
                              code="too_many_pixels")


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


@dataclass(frozen=True)
class Upright:
    image: Image.Image
    """RGB, upright, scaled so its longer side is at most ``max_side``."""
    width: int
    """Width of the upright image as uploaded (before scaling)."""
    height: int


def decode_rgb(data: bytes, *, max_bytes: int, max_pixels: int, max_side: int, max_decode_bytes: int,
               param: str = "file", resample: Image.Resampling = Image.Resampling.BICUBIC) -> Upright:
    """Bytes → an upright RGB image no longer than ``max_side`` on either side, and its upright size as uploaded.

    400 ``corrupt_image``: empty or truncated; 413: too many bytes or pixels, or a canvas over
    ``max_decode_bytes`` (checked from the header, before the pixels are decoded; JPEG is decoded reduced,
    ``plan_decode``); 415: not an image Pillow can read. ``param`` names the upload (``file.3``). Scaled
    down before it is turned upright and converted, so only the decoded canvas is ever full size."""
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
            image.thumbnail((max_side, max_side), resample)
        image = ImageOps.exif_transpose(image).convert("RGB")
    except CORRUPT as e:
        raise BadRequest(f"the image could not be decoded (truncated or corrupt): {e}", param=param,
                         code="corrupt_image")
    return Upright(image=image, width=width, height=height)
