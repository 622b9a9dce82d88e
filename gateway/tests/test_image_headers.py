"""``gateway.images.read_header`` against Pillow's ``Image.open``: on every image of a corpus (PNG and JPEG as Pillow
writes them in each mode and with each kind of metadata) and on thousands of damaged copies, a header it reads gives
what Pillow gives, and one it declines goes to Pillow; ``check_image`` answers as before either way."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from gateway.images import check_image, read_header
from modelhost.errors import PayloadTooLarge
from modelhost.images import open_image

pytestmark = pytest.mark.unit


def image(mode: str = "RGB", size: tuple[int, int] = (24, 16)) -> Image.Image:
    im = Image.new("RGB", size)
    im.putdata([((x * 37) % 256, (y * 91) % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])])
    return im.convert(mode)


def save(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunks(png: bytes, *chunks: bytes) -> bytes:
    """``png`` with ``chunks`` put in front of its first IDAT."""
    at = png.index(b"IDAT") - 4
    return png[:at] + b"".join(chunks) + png[at:]


def interlaced(png: bytes) -> bytes:
    """The IHDR marked Adam7 (the pixel data is not, which a header read does not see)."""
    ihdr = bytearray(png[16:29])
    ihdr[12] = 1
    return png[:8] + chunk(b"IHDR", bytes(ihdr)) + png[33:]


def with_segment(jpeg: bytes, marker: int, body: bytes) -> bytes:
    """``jpeg`` with one more segment right after its SOI."""
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def mpo() -> bytes:
    buf = io.BytesIO()
    image().save(buf, "MPO", save_all=True, append_images=[image(size=(24, 16))])
    return buf.getvalue()


exif = Image.Exif()
exif[0x0112] = 6  # orientation
exif[0x010F] = "Roundhouse"
exif[0x011A] = (300, 1)
ICC = b"\0" * 128 + b"not a real profile"

# Read here, so they must agree with Pillow: what cameras, phones, browsers and Pillow write.
FAST = {
    "png-rgb": save(image(), "PNG"),
    "png-rgba": save(image("RGBA"), "PNG"),
    "png-l": save(image("L"), "PNG"),
    "png-la": save(image("LA"), "PNG"),
    "png-1": save(image("1"), "PNG"),
    "png-p": save(image("P"), "PNG"),
    "png-i16": save(image("I;16"), "PNG"),
    "png-dpi": save(image(), "PNG", dpi=(300, 300)),
    "png-interlaced": interlaced(save(image(), "PNG")),
    "png-plain-chunks": with_chunks(save(image(), "PNG"), chunk(b"sRGB", b"\0"), chunk(b"gAMA", b"\0\0\xb1\x8f"),
                                    chunk(b"cHRM", bytes(32)), chunk(b"tIME", bytes(7))),
    "png-wide": save(image(size=(3000, 2)), "PNG"),
    "jpeg": save(image(), "JPEG"),
    "jpeg-l": save(image("L"), "JPEG"),
    "jpeg-cmyk": save(image("CMYK"), "JPEG"),
    "jpeg-progressive": save(image(), "JPEG", progressive=True),
    "jpeg-optimized": save(image(), "JPEG", optimize=True, quality=40),
    "jpeg-444": save(image(), "JPEG", subsampling=0, quality=95),
    "jpeg-exif": save(image(), "JPEG", exif=exif),
    "jpeg-icc": save(image(), "JPEG", icc_profile=ICC),
    "jpeg-comment": save(image(), "JPEG", comment=b"a comment"),
    "jpeg-dpi": save(image(), "JPEG", dpi=(72, 72)),
    "jpeg-restarts": save(image(size=(64, 64)), "JPEG", restart_marker_blocks=1),
    "jpeg-tall": save(image(size=(2, 3000)), "JPEG"),
}
text = PngImagePlugin.PngInfo()
text.add_text("Software", "Roundhouse")
# Left to Pillow: contents it parses and could refuse, other formats, a multi-picture JPEG.
DECLINED = {
    "png-text": save(image(), "PNG", pnginfo=text),
    "png-icc": save(image(), "PNG", icc_profile=ICC),
    "png-trns": save(image("P"), "PNG", transparency=0),
    "png-exif": save(image(), "PNG", exif=exif),
    "png-apng": save(image(), "PNG", save_all=True, append_images=[image("RGB")]),
    "mpo": mpo(),
    "jpeg-photoshop": with_segment(save(image(), "JPEG"), 0xED, b"Photoshop 3.0\0"),
    "webp": save(image(), "WEBP"),
    "gif": save(image(), "GIF"),
    "bmp": save(image(), "BMP"),
    "tiff": save(image(), "TIFF"),
}


def pillow(data: bytes) -> tuple[str, int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format, *im.size
    except Exception:  # noqa: BLE001 - whatever Pillow refuses a file with
        return None


@pytest.mark.parametrize("name", FAST)
def test_a_png_or_jpeg_header_is_read_as_pillow_reads_it(name: str) -> None:
    data = FAST[name]
    assert read_header(data) == pillow(data)
    assert read_header(data) is not None


@pytest.mark.parametrize("name", DECLINED)
def test_other_formats_and_parsed_metadata_are_left_to_pillow(name: str) -> None:
    assert pillow(DECLINED[name]) is not None
    assert read_header(DECLINED[name]) is None


@pytest.mark.parametrize("marker,body", [(0xEE, b"Adobe"), (0xE0, b"JFIF\0"), (0xED, b"Photoshop 3.0\x008BIM\x03\xed")])
def test_a_segment_pillow_reads_unguarded_goes_to_pillow(marker: int, body: bytes) -> None:
    """Too short for what Pillow's open reads from it without a guard: Pillow refuses the file, and so it must be
    Pillow that answers it."""
    data = with_segment(FAST["jpeg"], marker, body)
    assert pillow(data) is None
    assert read_header(data) is None


def damaged(data: bytes, rng: random.Random) -> list[bytes]:
    """Cut at every byte of the header and a little past it, and single bytes changed in the header."""
    head = min(len(data), (data.find(b"IDAT") if data.startswith(b"\x89PNG") else data.find(b"\xff\xda")) + 16)
    copies = [data[:n] for n in range(head)]
    for _ in range(300):
        at = rng.randrange(head)
        copy = bytearray(data)
        copy[at] = rng.choice([0, 1, 0x7F, 0xFF, copy[at] ^ (1 << rng.randrange(8))])
        copies.append(bytes(copy))
    return copies


@pytest.mark.parametrize("name", FAST)
def test_a_damaged_header_it_reads_is_one_pillow_reads_the_same(name: str) -> None:
    """Where Pillow opens a damaged copy, the two agree or the copy goes to Pillow; where Pillow refuses it, so
    does ``read_header`` (but for a JPEG's EXIF block, which Pillow forgives and the service reads)."""
    rng = random.Random(name)
    read = 0
    for copy in damaged(FAST[name], rng):
        mine, theirs = read_header(copy), pillow(copy)
        if mine is None:
            continue
        read += 1
        exif_at = copy.find(b"Exif\0\0")
        if theirs is None and exif_at >= 0:
            continue  # a fault in the EXIF block Pillow parses on open
        assert theirs is not None, f"{name}: read {mine} from a copy Pillow refuses"
        assert mine[1:] == theirs[1:] and theirs[0] in (mine[0], "MPO"), (name, mine, theirs)
    assert read > 0  # some damage (in the pixels' first bytes, in free-form metadata) leaves the header readable


def lying(side: int) -> tuple[bytes, bytes]:
    """The corpus' PNG and JPEG with headers that claim ``side`` x ``side`` pixels."""
    png, jpeg = FAST["png-rgb"], FAST["jpeg"]
    sof = jpeg.index(b"\xff\xc0")
    return (png[:8] + chunk(b"IHDR", struct.pack(">II", side, side) + png[24:29]) + png[33:],
            jpeg[:sof + 5] + struct.pack(">HH", side, side) + jpeg[sof + 9:])


def refusal(data: bytes, **limits: int) -> tuple[str, str]:
    with pytest.raises(PayloadTooLarge) as e:
        check_image(data, **limits)
    return e.value.code, e.value.message


@pytest.mark.parametrize("side,max_pixels", [(8000, 50_000_000), (40_000, 10**10)])
def test_check_image_refuses_a_lying_header_as_pillow_s_path_does(side: int, max_pixels: int) -> None:
    """Past ``max_pixels``, and past Pillow's own bomb limit when ``max_pixels`` is above it: the same 413 with the
    same words as ``open_image`` gives."""
    for data in lying(side):
        assert read_header(data) is not None and read_header(data)[1:] == (side, side)
        with pytest.raises(PayloadTooLarge) as e:
            open_image(data, max_bytes=10**6, max_pixels=max_pixels)
        assert refusal(data, max_bytes=10**6, max_pixels=max_pixels) == (e.value.code, e.value.message)
        assert e.value.code == "too_many_pixels"


def test_check_image_bounds_bytes_and_pixels_exactly() -> None:
    png = FAST["png-rgb"]
    assert check_image(png, max_bytes=len(png), max_pixels=24 * 16) == "PNG"
    assert refusal(png, max_bytes=10**6, max_pixels=24 * 16 - 1)[0] == "too_many_pixels"
    assert refusal(png, max_bytes=len(png) - 1, max_pixels=10**6)[0] == "payload_too_large"
