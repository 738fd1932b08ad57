"""Request -> ``TouchBatch``, all-or-nothing, or ``InvalidArgument`` naming every bad field.

The rules are the contract's (``schemas/heatmap/v1/heatmap.proto``), with the
limits from ``schemas.event_rules`` (the one rule set the worker's decoder
also applies):

* ``events``: 1..500 of them;
* ``screen_name``: 1..200 characters; ``campaign_id``: at most 200 characters;
* ``x``, ``y``: finite and within [0, 1] (both ends included);
* ``event_type``: TAP, SCROLL or ACTION_CLICK (UNSPECIFIED and unknown numbers
  are invalid);
* ``timestamp``: unset (the event gets the server's receive time), or inside
  the time window: not more than 24 h after the receive time and not older
  than ``HEATMAP_MAX_EVENT_AGE_S`` before it (``schemas.event_rules`` says
  why); ``nanos`` in [0, 1e9);
* ``batch_id``: at most 128 characters. Empty: if every event carries a
  timestamp, the gateway derives one from the user id and the request's bytes
  (``implicit_batch_id``), so a plain retry after UNAVAILABLE is counted
  once; otherwise it assigns a random one (no deduplication: two genuine
  identical requests without event times cannot be told from a retry).

"Unset" means the field is absent on the wire; an explicit ``Timestamp{}``
is the epoch itself (and so too old).

Every range check is done on the seconds before they are scaled to
milliseconds, so no int64 overflows (``2**63 // 1000 + 1`` seconds once
wrapped around to 1970).

Speed (per-event Python is the cost, so checks run per batch on numpy
arrays): protobuf's own parser reads the request once (the ground truth);
``ingest_gateway.columns`` then has the parser transpose the events into
columns, which agree with the ordinary decode whenever the request is in the
canonical wire form that protobuf serializers write (``columns.canonical``
checks that per request). A request in any other form (repeated singular
fields, packed singular fields, explicit defaults, unknown fields) is read
event by event from the ordinary decode instead: slower, same answer. Only
when a check fails does ``_violations`` walk the events one by one, to list
every offending field in request order.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from heatmap.errors import FieldViolation, InvalidArgument
from ingest_gateway.columns import canonical, dictionary, parse_columns, split
from schemas.event_rules import (
    COORDINATE_MAX,
    COORDINATE_MIN,
    DEFAULT_MAX_EVENT_AGE_S,
    EVENT_TYPE_NAMES,
    EVENT_TYPES,
    MAX_BATCH_ID,
    MAX_CAMPAIGN_ID,
    MAX_EVENTS,
    MAX_SCREEN_NAME,
    NANOS_PER_SECOND,
    TimeWindow,
)
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import TouchBatch


class BatchRejected(InvalidArgument):
    """``InvalidArgument`` with the rule names that failed (for the rejection metric)."""

    @property
    def reasons(self) -> frozenset[str]:
        """Field paths without indexes: ``events[3].x`` -> ``events.x``."""
        return frozenset(_reason(v.field) for v in self.violations)


class Undecodable(BatchRejected):
    """The bytes are not an ``IngestTouchEventsRequest`` at all."""

    def __init__(self) -> None:
        super().__init__(
            [FieldViolation("", "not a serialized IngestTouchEventsRequest")],
            "undecodable request",
        )

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset({"undecodable"})


def _reason(field: str) -> str:
    head, bracket, tail = field.partition("[")
    return head + tail.partition("]")[2] if bracket else field


def parse(data: bytes) -> heatmap_pb2.IngestTouchEventsRequest:
    """The request, or ``Undecodable`` (INVALID_ARGUMENT) for bytes that are not one."""
    try:
        return heatmap_pb2.IngestTouchEventsRequest.FromString(data)
    except DecodeError as e:
        raise Undecodable() from e


class _Columns:
    """One array per field, one entry per event, as protobuf's parser reads them."""

    __slots__ = ("campaign", "event_type", "nano", "screen", "sec", "unset", "x", "y")

    def __init__(
        self,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.float32],
        event_type: npt.NDArray[np.int64],
        sec: npt.NDArray[np.int64],
        nano: npt.NDArray[np.int64],
        unset: npt.NDArray[np.intp] | None,
        screen: tuple[list[str], npt.NDArray[np.uint32]],
        campaign: tuple[list[str], npt.NDArray[np.uint32]],
    ) -> None:
        self.x, self.y, self.event_type = x, y, event_type
        self.sec, self.nano = sec, nano
        self.unset = unset  # events without a timestamp (None: not known yet)
        self.screen, self.campaign = screen, campaign


def _event_by_event(request: heatmap_pb2.IngestTouchEventsRequest) -> _Columns:
    """The columns read attribute by attribute: any wire form, ~0.9 ms per 500 events
    (``bench.bench_validation``)."""
    events = request.events
    stamps = [e.timestamp for e in events]
    return _Columns(
        x=np.array([e.x for e in events], dtype=np.float32),
        y=np.array([e.y for e in events], dtype=np.float32),
        event_type=np.array([e.event_type for e in events], dtype=np.int64),
        sec=np.array([t.seconds for t in stamps], dtype=np.int64),
        nano=np.array([t.nanos for t in stamps], dtype=np.int64),
        unset=np.array(
            [i for i, e in enumerate(events) if not e.HasField("timestamp")], dtype=np.intp
        ),
        screen=dictionary([e.screen_name for e in events]),
        campaign=dictionary([e.campaign_id for e in events]),
    )


def _from_parser(
    data: bytes, request: heatmap_pb2.IngestTouchEventsRequest, events: Sequence[bytes]
) -> _Columns | None:
    """The columns transposed by the parser, or None if the wire form is not canonical."""
    n = len(events)
    if not canonical(data, request):
        return None
    try:
        columns = parse_columns(events)
    except DecodeError:
        # The shadow schema is stricter in one place: a packed x (say) whose
        # length is not a multiple of 4 is corrupt to it, an unknown field to
        # protobuf. The ordinary decode has the answer.
        return None

    def each(name: str) -> list[Any]:
        return [getattr(e, name) for e in request.events]

    def column(values: Sequence[Any], name: str) -> Sequence[Any]:
        # Canonical, so at most one value per event: a complete list is aligned.
        return values if len(values) == n else each(name)

    nanos = columns.nanos
    if nanos is not None and len(columns.seconds) in (0, n):
        nano = nanos
        # No seconds anywhere: clients that leave the time to the server (unset
        # and explicit epoch are told apart later).
        sec = np.array(columns.seconds, dtype=np.int64) if columns.seconds else np.zeros_like(nano)
    else:
        stamps = each("timestamp")
        sec = np.array([t.seconds for t in stamps], dtype=np.int64)
        nano = np.array([t.nanos for t in stamps], dtype=np.int64)
    unset: npt.NDArray[np.intp] | None = None
    # Only when some time reads (0, 0) is it worth asking which are absent; one
    # more parse tells the usual case, a fleet leaving the time to the server.
    if not sec.all() and not columns.any_timestamp_field():
        unset = np.arange(n, dtype=np.intp)
    return _Columns(
        x=np.array(column(columns.x, "x"), dtype=np.float32),
        y=np.array(column(columns.y, "y"), dtype=np.float32),
        event_type=np.array(column(columns.event_type, "event_type"), dtype=np.int64),
        sec=sec,
        nano=nano,
        unset=unset,
        screen=dictionary(list(column(columns.screen_name, "screen_name"))),
        campaign=columns.campaign or dictionary(each("campaign_id")),
    )


def to_batch(
    data: bytes,
    user_id: str,
    received_at_ms: int,
    max_event_age_s: int = DEFAULT_MAX_EVENT_AGE_S,
) -> TouchBatch:
    """The serialized request's events as one columnar batch, or ``BatchRejected``
    listing every violation (``Undecodable`` if the bytes are not a request)."""
    window = TimeWindow(received_at_ms, max_event_age_s)
    request = parse(data)
    n = len(request.events)
    if n == 0 or n > MAX_EVENTS or len(request.batch_id) > MAX_BATCH_ID:
        raise BatchRejected(_violations(request, window))
    try:
        events, _ = split(data)
    except DecodeError as e:  # the same framing protobuf just parsed: a bug of ours
        raise AssertionError("shadow split failed where protobuf's own parse succeeded") from e
    found = _from_parser(data, request, events)
    c = found if found is not None else _event_by_event(request)
    screen_dict, screen_index = c.screen
    campaign_dict, campaign_index = c.campaign
    x, y, event_type, sec, nano = c.x, c.y, c.event_type, c.sec, c.nano

    # Reductions, not element-wise masks: two per column. NaN propagates through
    # min/max and fails every comparison; inf is out of range. The seconds are
    # bounded before they are scaled, so the scaling cannot overflow.
    first_second = int(sec.min())
    ok = (
        x.min() >= COORDINATE_MIN
        and x.max() <= COORDINATE_MAX
        and y.min() >= COORDINATE_MIN
        and y.max() <= COORDINATE_MAX
        and event_type.min() >= EVENT_TYPES[0]
        and event_type.max() <= EVENT_TYPES[-1]
        and first_second >= 0
        and int(sec.max()) <= window.latest_ms // 1000
        and nano.min() >= 0
        and nano.max() < NANOS_PER_SECOND
        and min(map(len, screen_dict)) > 0
        and max(map(len, screen_dict)) <= MAX_SCREEN_NAME
        and max(map(len, campaign_dict)) <= MAX_CAMPAIGN_ID
    )
    if not ok:
        raise BatchRejected(_violations(request, window))
    timestamp_ms = sec * 1000 + nano // 1_000_000
    if first_second == 0:
        # Absent on the wire and explicitly the epoch both read as (0, 0).
        unset = c.unset
        if unset is None:
            zero = np.flatnonzero((sec == 0) & (nano == 0)).tolist()
            has = request.events.__getitem__
            unset = np.array([i for i in zero if not has(i).HasField("timestamp")], dtype=np.intp)
        timestamp_ms[unset] = received_at_ms
    if int(timestamp_ms.min()) < window.earliest_ms or int(timestamp_ms.max()) > window.latest_ms:
        raise BatchRejected(_violations(request, window))

    batch_id = request.batch_id
    if not batch_id and first_second > 0:
        # Every event carries its client time (seconds 0 would be too old), so
        # a plain retry of this request is the same bytes and two genuine
        # batches are not: the bytes can serve as the idempotency key.
        batch_id = implicit_batch_id(user_id, data)
    deduplicated = bool(batch_id)
    return TouchBatch(
        user_id=user_id,
        batch_id=batch_id if deduplicated else uuid.uuid4().hex,
        client_batch_id=deduplicated,
        received_at_ms=received_at_ms,
        screen_dict=screen_dict,
        screen_index=screen_index,
        campaign_dict=campaign_dict,
        campaign_index=campaign_index,
        x=x,
        y=y,
        timestamp_ms=timestamp_ms,
        event_type=event_type.astype(np.uint8),
    )


IMPLICIT_PREFIX = "implicit:"


def implicit_batch_id(user_id: str, data: bytes) -> str:
    """The idempotency key of a request without ``batch_id`` whose events all carry a
    timestamp: a digest of the user id and the request's bytes (128 bits, so
    distinct requests never collide in practice). Clients that retry by
    resending the same request are counted once, as with their own ``batch_id``."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=16)
    digest.update(b"\0")
    digest.update(data)
    return IMPLICIT_PREFIX + digest.hexdigest()


def _violations(
    request: heatmap_pb2.IngestTouchEventsRequest, window: TimeWindow
) -> list[FieldViolation]:
    """Every offending field, in request order (the slow path: only for bad requests)."""
    out: list[FieldViolation] = []
    n = len(request.events)
    if n == 0:
        out.append(FieldViolation("events", "at least 1 event is required"))
    elif n > MAX_EVENTS:
        out.append(FieldViolation("events", f"at most {MAX_EVENTS} events per request, got {n}"))
    if len(request.batch_id) > MAX_BATCH_ID:
        out.append(
            FieldViolation(
                "batch_id",
                f"at most {MAX_BATCH_ID} characters, got {len(request.batch_id)}",
            )
        )
    if n > MAX_EVENTS:
        # Per-event details of an oversized request would only be noise.
        return out
    for i, event in enumerate(request.events):
        out.extend(_event_violations(f"events[{i}]", event, window))
    return out


def _event_violations(
    path: str, event: heatmap_pb2.TouchEvent, window: TimeWindow
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    screen = len(event.screen_name)
    if screen == 0:
        out.append(FieldViolation(f"{path}.screen_name", "required"))
    elif screen > MAX_SCREEN_NAME:
        out.append(
            FieldViolation(
                f"{path}.screen_name", f"at most {MAX_SCREEN_NAME} characters, got {screen}"
            )
        )
    for name in ("x", "y"):
        value = float(np.float32(getattr(event, name)))
        if not math.isfinite(value):
            out.append(FieldViolation(f"{path}.{name}", f"must be finite, got {value}"))
        elif not COORDINATE_MIN <= value <= COORDINATE_MAX:
            out.append(FieldViolation(f"{path}.{name}", f"must be within [0, 1], got {value}"))
    if event.HasField("timestamp"):
        ts = event.timestamp
        if not 0 <= ts.nanos < NANOS_PER_SECOND:
            out.append(
                FieldViolation(f"{path}.timestamp", f"nanos must be in [0, 1e9), got {ts.nanos}")
            )
        elif ts.seconds < 0:
            out.append(FieldViolation(f"{path}.timestamp", "before 1970-01-01T00:00:00Z"))
        # Python integers: no overflow whatever the seconds.
        elif why := window.violation(ts.seconds * 1000 + ts.nanos // 1_000_000):
            out.append(FieldViolation(f"{path}.timestamp", why))
    campaign = len(event.campaign_id)
    if campaign > MAX_CAMPAIGN_ID:
        out.append(
            FieldViolation(
                f"{path}.campaign_id", f"at most {MAX_CAMPAIGN_ID} characters, got {campaign}"
            )
        )
    if event.event_type not in EVENT_TYPES:
        out.append(
            FieldViolation(
                f"{path}.event_type", f"must be one of {EVENT_TYPE_NAMES}, got {event.event_type}"
            )
        )
    return out
