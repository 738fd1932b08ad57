"""Validation of uploaded screenshots: a real, bounded PNG of the declared size.

Order matters: cheap checks first, and the pixel count comes from the PNG
header (IHDR, bytes 16..24) before Pillow decodes anything, so a
decompression bomb is rejected without inflating a single row. Pillow's own
``Image.MAX_IMAGE_PIXELS`` guard is left as it is (no global side effects);
our 40-megapixel limit is lower than its warning threshold, so by the time
Pillow opens the image it never needs it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from heatmap.errors import FieldViolation, InvalidArgument

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 10 * 1024 * 1024
MAX_PNG_PIXELS = 40_000_000
FIELD = "image_data"


@dataclass(frozen=True)
class PngInfo:
    width: int
    height: int


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG spec puts first."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidArgument([FieldViolation(FIELD, "PNG has no IHDR header chunk")])
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def check_header(
    data: bytes,
    *,
    max_bytes: int = MAX_PNG_BYTES,
    max_pixels: int = MAX_PNG_PIXELS,
) -> PngInfo:
    """The size the PNG header declares, after the checks that need no decoding.

    Cheap enough to run before waiting for a decode slot, so hostile input
    (bombs, non-PNGs, oversized files) never occupies one.
    """
    if not data:
        raise InvalidArgument([FieldViolation(FIELD, "is empty: a PNG image is required")])
    if len(data) > max_bytes:
        raise InvalidArgument(
            [FieldViolation(FIELD, f"is {len(data)} bytes; at most {max_bytes} bytes allowed")]
        )
    if not data.startswith(PNG_SIGNATURE):
        raise InvalidArgument([FieldViolation(FIELD, "is not a PNG (bad signature)")])
    png_w, png_h = header_size(data)
    if png_w <= 0 or png_h <= 0:
        raise InvalidArgument([FieldViolation(FIELD, "PNG header declares an empty image")])
    if png_w * png_h > max_pixels:
        raise InvalidArgument(
            [
                FieldViolation(
                    FIELD,
                    f"PNG is {png_w}x{png_h} = {png_w * png_h} pixels; "
                    f"at most {max_pixels} allowed",
                )
            ]
        )
    return PngInfo(png_w, png_h)


def decode_png(
    data: bytes,
    width: int,
    height: int,
    *,
    max_bytes: int = MAX_PNG_BYTES,
    max_pixels: int = MAX_PNG_PIXELS,
) -> Image.Image:
    """The decoded image if ``data`` is a valid PNG of ``width`` x ``height``; else InvalidArgument.

    The caller owns (and closes) the image: the one full decode an upload
    costs is reused to derive the render backdrop.
    """
    info = check_header(data, max_bytes=max_bytes, max_pixels=max_pixels)
    png_w, png_h = info.width, info.height
    image: Image.Image | None = None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as probe:
            probe.verify()  # chunk CRCs and structure, without decoding pixels
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        if image.size != (png_w, png_h):
            raise InvalidArgument([FieldViolation(FIELD, "PNG header is inconsistent")])
        image.load()  # a real decode: truncated or corrupt data fails here
    except InvalidArgument:
        if image is not None:
            image.close()
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as e:
        if image is not None:
            image.close()
        raise InvalidArgument([FieldViolation(FIELD, f"is not a valid PNG: {e}")]) from e
    violations = []
    if width != png_w:
        violations.append(FieldViolation("width", f"is {width}; the PNG is {png_w} wide"))
    if height != png_h:
        violations.append(FieldViolation("height", f"is {height}; the PNG is {png_h} high"))
    if violations:
        image.close()
        raise InvalidArgument(violations)
    return image


def check_png(
    data: bytes,
    width: int,
    height: int,
    *,
    max_bytes: int = MAX_PNG_BYTES,
    max_pixels: int = MAX_PNG_PIXELS,
) -> PngInfo:
    """The PNG's size if ``data`` is a valid PNG of ``width`` x ``height``; else InvalidArgument."""
    with decode_png(data, width, height, max_bytes=max_bytes, max_pixels=max_pixels) as image:
        return PngInfo(image.width, image.height)
