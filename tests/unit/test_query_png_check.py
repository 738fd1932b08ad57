"""UploadScreenshot's PNG checks: every kind of bad image is INVALID_ARGUMENT."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from heatmap.errors import InvalidArgument
from query_api.png_check import MAX_PNG_BYTES, PNG_SIGNATURE, check_png


def png_bytes(width: int = 40, height: int = 30, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), (10, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny file declaring a huge grey image: zlib of all-zero rows, never decoded here."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    data = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def fields(err: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in err.value.violations]


def test_valid_png_passes() -> None:
    info = check_png(png_bytes(40, 30), 40, 30)
    assert (info.width, info.height) == (40, 30)
    info = check_png(png_bytes(7, 9, "RGBA"), 7, 9)
    assert (info.width, info.height) == (7, 9)


def test_empty() -> None:
    with pytest.raises(InvalidArgument) as err:
        check_png(b"", 1, 1)
    assert fields(err) == ["image_data"]
    assert "empty" in err.value.violations[0].description


def test_not_png() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    for data in (jpeg.getvalue(), b"GIF89a" + b"\x00" * 100, b"hello world" * 10):
        with pytest.raises(InvalidArgument) as err:
            check_png(data, 8, 8)
        assert fields(err) == ["image_data"]
        assert "signature" in err.value.violations[0].description


def test_truncated() -> None:
    data = png_bytes(300, 200)
    noisy = io.BytesIO()
    Image.frombytes("RGB", (300, 200), random.Random(1).randbytes(180_000)).save(
        noisy, format="PNG"
    )
    for cut in (data[:20], data[:40], data[: len(data) // 2], noisy.getvalue()[:-100]):
        with pytest.raises(InvalidArgument) as err:
            check_png(cut, 300, 200)
        assert fields(err) == ["image_data"]


def test_corrupt_crc() -> None:
    data = bytearray(png_bytes(50, 50))
    data[30] ^= 0xFF  # inside the IHDR/IDAT region: CRC no longer matches
    with pytest.raises(InvalidArgument):
        check_png(bytes(data), 50, 50)


def test_decompression_bomb_rejected_before_decoding() -> None:
    data = bomb_png(20_000, 20_000)  # 400 MP declared, a few KiB on the wire
    assert len(data) < 100_000
    with pytest.raises(InvalidArgument) as err:
        check_png(data, 20_000, 20_000)
    assert fields(err) == ["image_data"]
    assert "pixels" in err.value.violations[0].description
    # Just over the 40 MP limit is rejected, too (below Pillow's own 89 MP guard).
    with pytest.raises(InvalidArgument):
        check_png(bomb_png(8000, 5001), 8000, 5001)


def test_wrong_size() -> None:
    data = png_bytes(40, 30)
    with pytest.raises(InvalidArgument) as err:
        check_png(data, 41, 30)
    assert fields(err) == ["width"]
    with pytest.raises(InvalidArgument) as err:
        check_png(data, 0, 0)
    assert fields(err) == ["width", "height"]


def test_too_big() -> None:
    data = png_bytes(10, 10)
    padded = data + b"\x00" * (MAX_PNG_BYTES + 1 - len(data))
    with pytest.raises(InvalidArgument) as err:
        check_png(padded, 10, 10)
    assert "bytes" in err.value.violations[0].description
    with pytest.raises(InvalidArgument):
        check_png(data, 10, 10, max_bytes=len(data) - 1)
