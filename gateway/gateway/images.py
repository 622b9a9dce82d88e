"""Cheap checks on an uploaded image before it is sent on: size, format and pixel count, read
from the header only. The service decodes fully and reports truncation itself.

PNG and JPEG, nearly every upload, are read here by ``read_header``: the bytes Pillow's ``Image.open`` reads for
them (PNG: the chunks before the image data, each checksum verified; JPEG: the segments before the first scan), by
the same rules, in a few microseconds against Pillow's 40-70 (on a caption, the gateway's largest cost after the hop
itself; ``bench/README.md``). Anything it does not follow exactly (another format, a chunk or segment whose contents
Pillow parses and could refuse, junk between segments, a truncated header) goes to Pillow, which names what is wrong.
One difference, by design: a JPEG's EXIF block is not parsed here (Pillow's open reads it for the DPI and forgives
most faults); the service reads it when it decodes, and answers a broken one.
"""

from __future__ import annotations

import struct
import zlib
from typing import Iterable

from modelhost.images import check_pixels, open_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (bit depth, colour type) pairs Pillow has a mode for (PngImagePlugin._MODES).
PNG_MODES = {(1, 0), (2, 0), (4, 0), (8, 0), (16, 0), (8, 2), (16, 2), (1, 3), (2, 3), (4, 3), (8, 3), (8, 4), (16, 4),
             (8, 6), (16, 6)}
# Chunks before the image data whose contents Pillow reads without a rule that could refuse them beyond a least
# length (PngStream's chunk_*), or does not read at all. The rest (tRNS, iCCP, text, APNG, eXIf...) go to Pillow.
PNG_PLAIN = {b"PLTE": 0, b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"bKGD": 0, b"tIME": 0, b"sBIT": 0,
             b"hIST": 0, b"sPLT": 0}
PNG_MAX_CHUNKS = 64
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")

# JPEG markers whose segment Pillow reads by its length (JpegImagePlugin.MARKER): SOF (size and mode), DQT (tables,
# checked), APP (metadata), COM, and those it skips.
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xDE}
JPEG_SKIPPED = {0xC4, 0xCC, 0xDC, 0xDD, 0xDF, 0xFE, *range(0xE0, 0xF0)}
JPEG_SOS = 0xDA
JPEG_MAX_SEGMENTS = 64


def read_header(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` of a PNG or JPEG whose header reads cleanly, as ``Image.open`` would find them;
    None for anything else (Pillow's to judge)."""
    if data.startswith(PNG_SIGNATURE):
        return _png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _jpeg(data)
    return None


def _png(data: bytes) -> tuple[str, int, int] | None:
    pos, size = 8, None
    for _ in range(PNG_MAX_CHUNKS):
        if pos + 8 > len(data):
            return None
        length = _U32.unpack_from(data, pos)[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":  # Pillow stops here, unchecked
            return ("PNG", *size) if size else None
        end = pos + 8 + length
        if not kind.isalpha() or end + 4 > len(data) or \
                zlib.crc32(data[pos + 4:end]) != _U32.unpack_from(data, end)[0]:
            return None
        if size is None:  # the first chunk: IHDR
            if kind != b"IHDR" or length != 13:
                return None
            w, h = _U32.unpack_from(data, pos + 8)[0], _U32.unpack_from(data, pos + 12)[0]
            depth, colour, compression, filtering, interlace = data[pos + 16:pos + 21]
            if not w or not h or (depth, colour) not in PNG_MODES or compression or filtering or interlace > 1:
                return None
            size = (w, h)
        elif length < PNG_PLAIN.get(kind, 1 << 32):
            return None
        pos = end + 4
    return None


def _jpeg(data: bytes) -> tuple[str, int, int] | None:
    pos, size = 2, None
    for _ in range(JPEG_MAX_SEGMENTS):
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        start, end = pos + 4, pos + 2 + _U16.unpack_from(data, pos + 2)[0]  # the segment's body: data[start:end]
        if end < start or end > len(data):
            return None
        if marker == JPEG_SOS:
            return ("JPEG", *size) if size else None
        if marker in JPEG_SOF:
            if end - start < 6 or data[start] != 8 or data[start + 5] not in (1, 3, 4):
                return None
            h, w = _U16.unpack_from(data, start + 1)[0], _U16.unpack_from(data, start + 3)[0]
            size = (w, h) if w and h else None
        elif marker == 0xDB:  # DQT: Pillow refuses a table cut short
            i = start
            while i < end:
                i += 1 + (64 if data[i] < 16 else 128)
            if i != end:
                return None
        elif marker not in JPEG_SKIPPED or _pillow_parses(data, marker, start, end):
            return None
        pos = end
    return None


def _pillow_parses(data: bytes, marker: int, start: int, end: int) -> bool:
    """An application segment whose contents Pillow's open parses and could refuse (JpegImagePlugin.APP)."""
    size = end - start
    return (marker == 0xE0 and data.startswith(b"JFIF", start) and size < 7  # the version, read unguarded
            or marker == 0xE2 and data.startswith(b"MPF\0", start)  # a multi-picture index: read as MPO
            or marker == 0xE2 and data.startswith(b"ICC_PROFILE\0", start) and size < 14  # a fragment it cannot order
            or marker == 0xED and data.startswith(b"Photoshop 3.0\0", start)  # resource blocks, read unguarded
            or marker == 0xEE and data.startswith(b"Adobe", start) and size < 7)  # the version, read unguarded


def check_image(data: bytes, *, max_bytes: int, max_pixels: int, param: str = "file") -> str:
    """Return the image format (e.g. ``"JPEG"``) or raise the 4xx that fits."""
    head = read_header(data) if 0 < len(data) <= max_bytes else None
    if head is None:
        with open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param) as im:
            return im.format or "unknown"
    fmt, w, h = head
    check_pixels(w, h, max_pixels=max_pixels, param=param)
    return fmt


def check_images(parts: Iterable[tuple[str, bytes]], *, max_bytes: int, max_pixels: int) -> None:
    """``check_image`` on each ``(param, bytes)``: the first bad one's 4xx, naming it."""
    for param, data in parts:
        check_image(data, max_bytes=max_bytes, max_pixels=max_pixels, param=param)
