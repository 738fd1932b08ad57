"""Protobuf wire-format writers for hand-made messages (the fuzz tests): the
encodings a hostile or unusual client could send, not only protobuf's own."""

from __future__ import annotations

VARINT, I64, LEN, I32 = 0, 1, 2, 5  # wire types


def varint(value: int, extra: int = 0) -> bytes:
    """``value`` as a varint (two's complement for negatives, as int64 fields are);
    ``extra`` > 0 writes that many redundant continuation bytes (non-minimal)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if not value:
            break
        out.append(low | 0x80)
    if extra:  # the last group still flagged "more", then zero groups
        out.append(low | 0x80)
        out.extend(b"\x80" * (extra - 1) + b"\x00")
    else:
        out.append(low)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload
