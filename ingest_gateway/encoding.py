"""``encode``: the bytes of ``schemas.touch_batch.encode_batch``, written straight from numpy.

``encode_batch`` builds a protobuf message from Python lists (``tolist()`` and
one conversion per element: ~0.1 ms per 500 events, a fifth of the gateway's
per-request work). The format's columns are packed repeated fields, which
numpy can write directly: floats are their little-endian bytes, integers are
varints computed for the whole column at once. Fields are written in field
number order with proto3's rules (defaults left out, packed columns as one
length-delimited field), which is exactly what the protobuf serializer emits,
so the output is byte-for-byte ``encode_batch``'s;
``tests/unit/test_gateway_encoding.py`` holds that on random batches and
decodes the result with ``decode_batch``. A change to the format in
``schemas/`` must change this module too, and that test says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from schemas.touch_batch import FORMAT_VERSION, TouchBatch

_U64 = (1 << 64) - 1


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64: ten bytes of two's complement, as protobuf does
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SHIFTS = np.arange(10, dtype=np.uint64) * np.uint64(7)
_LIMITS = np.left_shift(np.uint64(1), _SHIFTS[1:])  # 2**7, 2**14, ... 2**63


def _varints(values: npt.NDArray[np.integer]) -> bytes:
    """The packed varint encoding of a column of integers."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    high = int(v.max())
    if high < 0x80:
        return v.astype(np.uint8).tobytes()
    width = (high.bit_length() + 6) // 7
    if (int(v.min()).bit_length() + 6) // 7 == width:
        # The usual case for timestamps: every value has the same number of 7-bit groups.
        octets = ((v[:, None] >> _SHIFTS[None, :width]) & np.uint64(0x7F)).astype(np.uint8)
        octets[:, :-1] |= np.uint8(0x80)
        return octets.tobytes()
    # 7-bit groups per value: 1 + how many of 2**7, 2**14, ... it reaches.
    groups = np.searchsorted(_LIMITS, v, side="right") + 1
    octets = (v[:, None] >> _SHIFTS[None, :width]).astype(np.uint8) & np.uint8(0x7F)
    k = np.arange(width)
    octets |= (k[None, :] + 1 < groups[:, None]).astype(np.uint8) << np.uint8(7)
    return octets[k[None, :] < groups[:, None]].tobytes()


def _field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _strings(tag: int, values: Sequence[str]) -> bytes:
    out = bytearray()
    for value in values:
        raw = value.encode()
        if len(raw) < 0x80:  # one-byte length: nearly every screen name and campaign id
            out.append(tag)
            out.append(len(raw))
            out += raw
        else:
            out += _field(tag, raw)
    return bytes(out)


def encode(batch: TouchBatch) -> bytes:
    """``encode_batch(batch)``, byte for byte, without building a protobuf message."""
    parts = [b"\x08" + _varint(FORMAT_VERSION)]
    if batch.user_id:
        parts.append(_field(0x12, batch.user_id.encode()))
    if batch.batch_id:
        parts.append(_field(0x1A, batch.batch_id.encode()))
    if batch.client_batch_id:
        parts.append(b"\x20\x01")
    if batch.received_at_ms:
        parts.append(b"\x28" + _varint(batch.received_at_ms))
    if len(batch) == 0:
        raise ValueError("a batch holds at least one event")
    parts += (
        _strings(0x32, batch.screen_dict),
        _field(0x3A, _varints(batch.screen_index)),
        _strings(0x42, batch.campaign_dict),
        _field(0x4A, _varints(batch.campaign_index)),
        _field(0x52, batch.x.astype("<f4").tobytes()),
        _field(0x5A, batch.y.astype("<f4").tobytes()),
        _field(0x62, _varints(batch.timestamp_ms)),
        _field(0x6A, _varints(batch.event_type)),
    )
    return b"".join(parts)
