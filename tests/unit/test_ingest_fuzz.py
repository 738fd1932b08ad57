"""Differential fuzzing of the gateway's fast parser against protobuf's own, and the
ingest invariant: whatever the gateway accepts, the worker decodes and accepts.

Hypothesis builds requests from valid messages, boundary values (the whole
int64 range of seconds, NaN, infinities, subnormals, over-long strings) and
hand-made wire encodings no serializer writes (repeated and packed singular
fields, explicit defaults, unknown fields of every wire type, over-long
varints, truncated and flipped bytes). For every request:

* protobuf cannot parse it  -> the gateway answers ``Undecodable``;
* a reference reading of protobuf's parse (written here, event by event,
  from the contract's rules) finds a violation -> the gateway rejects it;
* otherwise the gateway accepts it, with exactly the reference's columns,
  and the Kafka bytes it would publish decode in the worker to the same
  batch (nothing acknowledged is ever dead-lettered).

``HEATMAP_FUZZ_EXAMPLES`` sets the number of cases per test (default 300 in
``make check``; a long run: ``HEATMAP_FUZZ_EXAMPLES=200000 .venv/bin/python -m
pytest tests/unit/test_ingest_fuzz.py --hypothesis-show-statistics``).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingest_gateway.encoding import encode
from ingest_gateway.validation import BatchRejected, Undecodable, to_batch
from schemas.event_rules import MAX_EVENT_AGE_LIMIT_S
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import TouchBatch, decode_batch
from tests.wire_support import I32, I64, LEN, VARINT, length_delimited, tag, varint

NOW_MS = 1_795_000_000_123
DAY_MS = 86_400_000
EXAMPLES = int(os.environ.get("HEATMAP_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------ wire encoding

# ------------------------------------------------------------ strategies

seconds_values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers((NOW_MS - 40 * DAY_MS) // 1000, (NOW_MS + 2 * DAY_MS) // 1000),
    st.sampled_from(
        [
            0,
            -1,
            2**62,
            2**63 // 1000,
            2**63 // 1000 + 1,
            (NOW_MS + DAY_MS) // 1000,
            (NOW_MS + DAY_MS) // 1000 + 1,
            (NOW_MS - 30 * DAY_MS) // 1000,
            (NOW_MS - 30 * DAY_MS) // 1000 - 1,
        ]
    ),
)
nanos_values = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 10**9 - 1),
    st.sampled_from([0, 999_999_999, 10**9, 1 << 30, -1]),
)
coordinates = st.one_of(
    st.floats(0.0, 1.0, width=32),
    st.floats(width=32),  # NaN, infinities, anything
    st.sampled_from([0.0, -0.0, 1.0, 1.0000001, -1e-45, 1e-45, math.nextafter(1.0, 2.0)]),
)
event_types = st.one_of(st.sampled_from([1, 2, 3]), st.integers(-(2**31), 2**31 - 1))
names = st.one_of(
    st.sampled_from(["Home", "Cart", "é" * 200, "x" * 200, "ü" * 201, "", "Checkout"]),
    st.text(max_size=210),
)
campaigns = st.one_of(
    st.sampled_from(["", "", "spring", "c" * 200, "c" * 201]), st.text(max_size=8)
)


@st.composite
def valid_event(draw: st.DrawFn) -> bytes:
    """A ``TouchEvent`` inside every rule, boundaries included."""
    event = heatmap_pb2.TouchEvent(
        screen_name=draw(st.sampled_from(["Home", "é" * 200, "x" * 200, "Cart"])),
        x=draw(st.one_of(st.floats(0.0, 1.0, width=32), st.sampled_from([0.0, -0.0, 1.0]))),
        y=draw(st.floats(0.0, 1.0, width=32)),
        campaign_id=draw(st.sampled_from(["", "", "spring", "c" * 200])),
        event_type=draw(st.sampled_from([1, 2, 3])),  # type: ignore[arg-type]
    )
    if draw(st.booleans()):
        event.timestamp.FromMilliseconds(draw(st.integers(NOW_MS - 30 * DAY_MS, NOW_MS + DAY_MS)))
    return event.SerializeToString()


@st.composite
def message_event(draw: st.DrawFn) -> bytes:
    """A ``TouchEvent`` written by protobuf's serializer (the canonical form)."""
    event = heatmap_pb2.TouchEvent(
        screen_name=draw(names),
        x=draw(coordinates),
        y=draw(coordinates),
        campaign_id=draw(campaigns),
        event_type=draw(event_types),  # type: ignore[arg-type]
    )
    if draw(st.booleans()):
        event.timestamp.seconds = draw(seconds_values)
        event.timestamp.nanos = draw(nanos_values)
        if draw(st.integers(0, 9)) == 0:
            event.timestamp.SetInParent()  # present, possibly empty
    return event.SerializeToString()


def _float_field(number: int, value: float, packed: bool) -> bytes:
    raw = struct.pack("<f", value)
    return length_delimited(number, raw) if packed else tag(number, I32) + raw


@st.composite
def wire_field(draw: st.DrawFn, number: int) -> bytes:
    """One occurrence of event field ``number`` in an ordinary or a hand-made form."""
    form = draw(st.integers(0, 9))
    if number in (1, 5):  # strings
        text = draw(names if number == 1 else campaigns)
        payload = text.encode()
        if form == 0:
            payload = draw(st.binary(max_size=6))  # maybe not UTF-8
        return tag(number, LEN) + varint(len(payload), extra=int(form == 1)) + payload
    if number in (2, 3):
        return _float_field(number, draw(coordinates), packed=form == 0)
    if number == 6:
        value = draw(event_types)
        if form == 0:
            return length_delimited(number, varint(value))  # packed
        return tag(number, VARINT) + varint(value, extra=int(form == 1) * draw(st.integers(1, 3)))
    # 4: a timestamp built field by field
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        inner = draw(st.sampled_from([1, 2]))
        value = draw(seconds_values if inner == 1 else nanos_values)
        if draw(st.integers(0, 7)) == 0:
            parts.append(length_delimited(inner, varint(value)))  # packed
        else:
            parts.append(
                tag(inner, VARINT) + varint(value, extra=int(draw(st.integers(0, 7)) == 0))
            )
    return length_delimited(4, b"".join(parts))


@st.composite
def unknown_field(draw: st.DrawFn) -> bytes:
    number = draw(st.one_of(st.integers(7, 2**29 - 1), st.integers(1, 6)))
    wire_type = draw(st.sampled_from([VARINT, I64, LEN, I32]))
    if wire_type == VARINT:
        return tag(number, VARINT) + varint(draw(st.integers(0, 2**64 - 1)))
    if wire_type == I64:
        return tag(number, I64) + draw(st.binary(min_size=8, max_size=8))
    if wire_type == I32:
        return tag(number, I32) + draw(st.binary(min_size=4, max_size=4))
    return length_delimited(number, draw(st.binary(max_size=12)))


@st.composite
def hand_made_event(draw: st.DrawFn) -> bytes:
    """Fields in any order, any of them missing, repeated, packed or unknown."""
    numbers = draw(st.lists(st.sampled_from([1, 2, 3, 4, 5, 6]), max_size=9))
    fields = [draw(wire_field(n)) for n in numbers]
    fields += draw(st.lists(unknown_field(), max_size=2))
    return b"".join(draw(st.permutations(fields)))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    # Half the requests hold only valid events (the fast path's accepted case is
    # under test); the others mix in boundary values and hand-made encodings.
    mixed = draw(st.booleans())
    base = draw(message_event() if mixed else valid_event())
    kinds = ["same", "valid", "message", "hand"] if mixed else ["same", "valid"]
    strategies = {"valid": valid_event, "message": message_event, "hand": hand_made_event}
    events = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(kinds))
        events.append(base if kind == "same" else draw(strategies[kind]()))
    if draw(st.integers(0, 30)) == 0:
        events = [base] * draw(st.integers(495, 505))  # around the count limit
    body = b"".join(length_delimited(1, e) for e in events)
    if draw(st.booleans()):
        batch_id = draw(st.one_of(st.text(max_size=20), st.sampled_from(["k" * 128, "k" * 129])))
        body += length_delimited(2, batch_id.encode())
    if draw(st.integers(0, 9)) == 0:
        body += draw(unknown_field())
    damage = draw(st.integers(0, 39))
    if damage == 0 and body:
        body = body[: draw(st.integers(0, len(body) - 1))]  # truncated
    elif damage == 1 and body:
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1 :]
    return body


# ------------------------------------------------------------ the reference


@dataclass(frozen=True)
class Row:
    screen: str
    campaign: str
    x: float
    y: float
    timestamp_ms: int
    event_type: int


def reference(data: bytes, received_ms: int, max_age_s: int) -> list[Row] | str:
    """The contract's rules over protobuf's own parse: the rows, or why not."""
    try:
        request = heatmap_pb2.IngestTouchEventsRequest.FromString(data)
    except DecodeError:
        return "undecodable"
    if not 1 <= len(request.events) <= 500 or len(request.batch_id) > 128:
        return "invalid"
    rows = []
    for e in request.events:
        x, y = float(np.float32(e.x)), float(np.float32(e.y))
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):  # NaN fails too
            return "invalid"
        if not 1 <= len(e.screen_name) <= 200 or len(e.campaign_id) > 200:
            return "invalid"
        if e.event_type not in (1, 2, 3):
            return "invalid"
        timestamp_ms = received_ms
        if e.HasField("timestamp"):
            seconds, nanos = e.timestamp.seconds, e.timestamp.nanos
            if not 0 <= nanos < 10**9:
                return "invalid"
            timestamp_ms = seconds * 1000 + nanos // 10**6
            if not received_ms - max_age_s * 1000 <= timestamp_ms <= received_ms + DAY_MS:
                return "invalid"
        rows.append(Row(e.screen_name, e.campaign_id, x, y, timestamp_ms, e.event_type))
    return rows


def rows_of(batch: TouchBatch) -> list[Row]:
    return [
        Row(
            batch.screen_dict[int(s)],
            batch.campaign_dict[int(c)],
            float(x),
            float(y),
            int(t),
            int(k),
        )
        for s, c, x, y, t, k in zip(
            batch.screen_index,
            batch.campaign_index,
            batch.x,
            batch.y,
            batch.timestamp_ms,
            batch.event_type,
            strict=True,
        )
    ]


def check(data: bytes, max_age_s: int = 30 * 86_400, note: bool = True) -> None:
    """Gateway vs reference on ``data``; ``note``: count outcomes in Hypothesis' statistics."""
    label = event if note else (lambda _: None)
    want = reference(data, NOW_MS, max_age_s)
    outcome: BatchRejected | TouchBatch
    try:
        outcome = to_batch(data, "user-1", NOW_MS, max_age_s)
    except BatchRejected as e:
        outcome = e
    if isinstance(outcome, Undecodable):
        label("undecodable")
        assert want == "undecodable"
        return
    if isinstance(outcome, BatchRejected):
        label("rejected")
        assert want == "invalid", f"rejected a valid request: {outcome.violations[:3]}"
        assert outcome.violations, "a rejection names at least one field"
        return
    batch = outcome
    label("accepted")
    assert not isinstance(want, str), f"accepted a request protobuf calls {want}"
    got = rows_of(batch)
    # -0.0 == 0.0, so compare bit patterns of the coordinates too.
    assert got == want
    assert [math.copysign(1, r.x) for r in got] == [math.copysign(1, r.x) for r in want]
    # The invariant: what the gateway would publish, the worker decodes unchanged.
    decoded = decode_batch(encode(batch))
    assert rows_of(decoded) == got
    assert decoded.user_id == "user-1"
    assert decoded.received_at_ms == NOW_MS


@FUZZ
@given(requests())
def test_fast_parser_agrees_with_protobuf_or_rejects(data: bytes) -> None:
    check(data)


@FUZZ
@given(
    st.lists(st.one_of(valid_event(), valid_event(), message_event()), min_size=1, max_size=60),
    st.integers(1, MAX_EVENT_AGE_LIMIT_S),
)
def test_every_accepted_request_decodes_in_the_worker_whatever_the_age_setting(
    events: list[bytes], max_age_s: int
) -> None:
    check(b"".join(length_delimited(1, e) for e in events), max_age_s)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    check(data)


def test_hand_made_forms_that_shift_values_between_events_are_read_like_protobuf() -> None:
    # One event with x twice, the next without x: the shadow column has the
    # right length but the wrong alignment; protobuf says (0.25, 0.0).
    first = b"\x0a\x01A" + _float_field(2, 0.5, False) + _float_field(2, 0.25, False) + b"\x30\x01"
    second = b"\x0a\x01A\x30\x01"
    check(length_delimited(1, first) + length_delimited(1, second), note=False)
    # A packed x is an unknown field to protobuf (x stays 0.0), a value to the shadow schema.
    packed = b"\x0a\x01A\x30\x01" + _float_field(2, 0.5, True)
    check(length_delimited(1, packed) * 3, note=False)
    # A packed x of 5 bytes: corrupt to the shadow schema, an unknown field to protobuf.
    odd = b"\x0a\x01A\x30\x01" + length_delimited(2, b"\x00" * 5)
    check(length_delimited(1, odd), note=False)
    batch = to_batch(length_delimited(1, packed) * 3, "u", NOW_MS)
    assert batch.x.tolist() == [0.0, 0.0, 0.0]
