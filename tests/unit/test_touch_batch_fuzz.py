"""Differential fuzzing of the worker's fast Kafka-message decoders against protobuf's parser.

``decode_batch`` reads the packed columns' bytes with numpy (``_read_packed``)
and ``decode_batches`` decodes and checks a whole list of messages at once;
the reference is protobuf's own parse converted column by column
(``_read_parsed``), with the same checks. Hypothesis writes messages at the
wire level: valid batches, values at and past every limit (indexes past the
dictionary or past 32 bits, event types past 127, negative and huge
timestamps, NaN and infinities), and encodings no serializer writes (packed
fields split in chunks or sent unpacked, empty chunks, over-long varints,
unknown fields, shuffled field order, truncated messages and chunks). For
every message, and for lists of them, the outcome must be the reference's:
the same batch (values and dtypes) or the same error message.

``HEATMAP_FUZZ_EXAMPLES`` sets the number of cases per test (default 300).
"""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heatmap_devtools.fleet import FleetSpec
from schemas.touch_batch import (
    BatchFormatError,
    TouchBatch,
    _read_packed,
    _read_parsed,
    _validated,
    decode_batch,
    decode_batches,
    encode_batch,
)
from tests.wire_support import length_delimited, tag, varint
from tests.worker_support import fleet_batches

RECEIVED_MS = 1_795_000_000_000
FUZZ = settings(
    max_examples=int(os.environ.get("HEATMAP_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# Column name -> field number, varint (True) or float (False).
COLUMNS = {
    "screen_index": (7, True),
    "campaign_index": (9, True),
    "x": (10, False),
    "y": (11, False),
    "timestamp_ms": (12, True),
    "event_type": (13, True),
}


def reference(data: bytes) -> TouchBatch | str:
    """protobuf's parse, converted column by column, then the checks: a batch or an error."""
    try:
        return _validated(*_read_parsed(data))
    except BatchFormatError as e:
        return str(e)


def outcome(decode: object) -> TouchBatch | str:
    return str(decode) if isinstance(decode, BatchFormatError) else decode  # type: ignore[return-value]


def assert_same(got: TouchBatch | str, want: TouchBatch | str) -> None:
    if isinstance(want, str) or isinstance(got, str):
        assert got == want
        return
    for field in dataclasses.fields(TouchBatch):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert list(a) == list(b) if isinstance(b, list) else a == b, field.name


@st.composite
def column_values(
    draw: st.DrawFn, name: str, n: int, dict_size: int, valid: bool
) -> list[int] | list[float]:
    if valid or draw(st.integers(0, 11)):  # mostly valid values: the fast paths must accept them
        return draw(valid_values(name, n, dict_size))
    if name in ("x", "y"):
        special = st.sampled_from([0.0, 1.0, -0.0, 1.0000001, -1e-9, float("nan"), float("inf")])
        value = st.one_of(st.floats(0, 1, width=32), special, st.floats(width=32))
        return [draw(value) for _ in range(n)]
    if name == "event_type":
        value = st.one_of(st.integers(1, 3), st.sampled_from([0, 4, 127, 128, 300, -1, 2**31]))
    elif name == "timestamp_ms":
        near = st.integers(RECEIVED_MS - 400 * 86_400_000 - 5, RECEIVED_MS + 86_400_000 + 5)
        value = st.one_of(near, st.sampled_from([0, -5, 2**35, 2**62, 2**63 - 1]))
    else:
        value = st.one_of(
            st.integers(0, max(dict_size - 1, 0)),
            st.sampled_from([dict_size, 127, 128, 300, 2**28, 2**32 + 1, -1]),
        )
    return [draw(value) for _ in range(n)]


@st.composite
def valid_values(draw: st.DrawFn, name: str, n: int, dict_size: int) -> list[int] | list[float]:
    if name in ("x", "y"):
        return [draw(st.floats(0, 1, width=32)) for _ in range(n)]
    if name == "event_type":
        return [draw(st.integers(1, 3)) for _ in range(n)]
    if name == "timestamp_ms":  # 6 varint bytes each, unless written over-long
        return [draw(st.integers(RECEIVED_MS - 3_600_000, RECEIVED_MS + 1000)) for _ in range(n)]
    return [draw(st.integers(0, max(dict_size - 1, 0))) for _ in range(n)]


@st.composite
def column_field(
    draw: st.DrawFn, name: str, values: list[int] | list[float], valid: bool
) -> list[bytes]:
    """The field's encodings, as a list of wire fragments (shuffled with the others)."""
    number, is_varint = COLUMNS[name]
    over_long = draw(st.sampled_from([0] * 8 + [1, 3]))

    def element(v: int | float) -> bytes:
        if is_varint:
            return varint(int(v), over_long if draw(st.booleans()) else 0)
        return struct.pack("<f", v)

    encoding = draw(st.sampled_from(["packed"] * 8 + ["split", "unpacked", "empty+packed"]))
    if encoding == "unpacked":
        wire = 0 if is_varint else 5
        return [tag(number, wire) + element(v) for v in values]
    encoded = [element(v) for v in values]
    if encoding == "split" and len(encoded) > 1:
        cut = draw(st.integers(1, len(encoded) - 1))
        return [
            length_delimited(number, b"".join(encoded[:cut])),
            length_delimited(number, b"".join(encoded[cut:])),
        ]
    payload = b"".join(encoded)
    if not valid and draw(st.integers(0, 29)) == 0 and payload:  # a chunk ending mid-value
        payload = payload[:-1] + bytes([payload[-1] | 0x80]) if is_varint else payload[:-1]
    fragments = [length_delimited(number, payload)]
    if encoding == "empty+packed":
        fragments.insert(0, length_delimited(number, b""))
    return fragments


@st.composite
def messages(draw: st.DrawFn, valid: bool = False) -> bytes:
    """A message at the wire level; ``valid``: a valid batch, only its encoding varies."""
    if valid:
        return draw(valid_messages())
    n = draw(st.integers(0, 6))
    screens = draw(st.lists(st.text(min_size=0, max_size=3), min_size=0, max_size=200))
    if draw(st.integers(0, 5)):
        screens = [f"s{i}{s}" for i, s in enumerate(screens or [""])]  # valid names
    campaigns = draw(st.lists(st.sampled_from(["", "c", "spring"]), min_size=0, max_size=2))
    fragments = [
        tag(1, 0) + varint(draw(st.sampled_from([1] * 12 + [0, 2]))),
        length_delimited(2, draw(st.sampled_from([b"user-1"] * 6 + [b"", b"u\xc3\xa9", b"\xff"]))),
        length_delimited(3, draw(st.sampled_from([b"b-1"] * 8 + [b""]))),
        tag(4, 0) + varint(draw(st.integers(0, 2))),
        tag(5, 0) + varint(draw(st.sampled_from([RECEIVED_MS] * 8 + [0, -1]))),
        *(length_delimited(6, s.encode()) for s in screens),
        *(length_delimited(8, c.encode()) for c in campaigns),
    ]
    for name in COLUMNS:
        length = n if draw(st.integers(0, 29)) else draw(st.integers(0, 7))
        size = len(screens) if name == "screen_index" else len(campaigns)
        values = draw(column_values(name, length, size, False))
        fragments += draw(column_field(name, values, False))
    if draw(st.integers(0, 19)) == 0:
        fragments.append(
            draw(st.sampled_from([tag(99, 0) + varint(5), length_delimited(98, b"zz")]))
        )
    if draw(st.booleans()):
        fragments = draw(st.permutations(fragments))
    data = b"".join(fragments)
    if draw(st.integers(0, 29)) == 0 and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    n = draw(st.integers(1, 6))
    screens = [f"s{i}" for i in range(draw(st.integers(1, 200)))]  # > 128: 2-byte indexes
    campaigns = ["", "spring"]
    fragments = [
        tag(1, 0) + varint(1),
        length_delimited(2, b"user-1"),
        length_delimited(3, b"b-1"),
        tag(4, 0) + varint(draw(st.integers(0, 1))),
        tag(5, 0) + varint(RECEIVED_MS),
        *(length_delimited(6, name.encode()) for name in screens),
        *(length_delimited(8, c.encode()) for c in campaigns),
    ]
    for name in COLUMNS:
        size = len(screens) if name == "screen_index" else len(campaigns)
        fragments += draw(column_field(name, draw(valid_values(name, n, size)), True))
    return b"".join(draw(st.permutations(fragments)) if draw(st.booleans()) else fragments)


@FUZZ
@given(messages())
def test_decode_batch_is_protobufs_parse(data: bytes) -> None:
    assert_same(outcome(_try(decode_batch, data)), reference(data))


@FUZZ
@given(st.lists(messages(), min_size=1, max_size=6), st.data())
def test_decode_batches_is_decode_batch_of_each(payloads: list[bytes], data: st.DataObject) -> None:
    # Valid fleet messages between the fuzzed ones: the list must not lose them either.
    valid = [encode_batch(b) for b in fleet_batches(2, 5, spec=FleetSpec(seed=1))]
    mixed = list(payloads)
    for message in valid:
        mixed.insert(data.draw(st.integers(0, len(mixed))), message)
    for got, message in zip(decode_batches(mixed), mixed, strict=True):
        assert_same(outcome(got), reference(message))


def test_the_gateways_messages_take_the_fast_paths() -> None:
    batches = fleet_batches(20, 500, spec=FleetSpec(kind="realistic", seed=3))
    payloads = [encode_batch(b) for b in batches]
    assert all(_read_packed(p) is not None for p in payloads)
    decoded = decode_batches(payloads)
    for got, want in zip(decoded, batches, strict=True):
        assert isinstance(got, TouchBatch)
        assert_same(got, reference(encode_batch(want)))
    # Decoded together: every batch's columns are slices of one array per column.
    first, second = decoded[0], decoded[1]
    assert isinstance(first, TouchBatch)
    assert isinstance(second, TouchBatch)
    assert first.timestamp_ms.base is not None
    assert first.timestamp_ms.base is second.timestamp_ms.base


def _try(decode: object, data: bytes) -> object:
    try:
        return decode(data)  # type: ignore[operator]
    except BatchFormatError as e:
        return e


@FUZZ
@given(messages(valid=True))
def test_valid_messages_in_any_encoding_decode_alike(data: bytes) -> None:
    # Valid by construction, only the encoding varies: the reference accepts every one
    # (so the differential tests above are not only about errors).
    want = reference(data)
    assert isinstance(want, TouchBatch)
    assert_same(outcome(_try(decode_batch, data)), want)
    (got,) = decode_batches([data])
    assert_same(outcome(got), want)
