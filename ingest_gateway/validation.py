"""Request -> ``TouchBatch``, all-or-nothing, or ``InvalidArgument`` naming every bad field.

The rules are the contract's (``schemas/heatmap/v1/heatmap.proto``):

* ``events``: 1..500 of them;
* ``screen_name``: 1..200 characters; ``campaign_id``: at most 200 characters;
* ``x``, ``y``: finite and within [0, 1] (both ends included);
* ``event_type``: TAP, SCROLL or ACTION_CLICK (UNSPECIFIED and unknown numbers
  are invalid);
* ``timestamp``: unset (the event gets the server's receive time) or not more
  than 24 h after the receive time;
* ``batch_id``: at most 128 characters (empty: the gateway assigns a uuid4 hex).

Two timestamp rules beyond the contract's text, because ClickHouse
``DateTime`` cannot hold such values and they can only be client bugs: a
timestamp before 1970-01-01T00:00:00Z, and ``nanos`` outside [0, 1e9) (which
the protobuf ``Timestamp`` documentation already calls invalid), are
INVALID_ARGUMENT too. "Unset" means the field is absent on the wire; an
explicit ``Timestamp{seconds: 0, nanos: 0}`` is the epoch itself.

Speed (DESIGN.md: per-event Python is the cost): the protobuf parser itself
transposes the events into columns (``ingest_gateway.columns``: the events
re-parsed with shadow schemas, markers keeping the often-default campaign
and nanos columns aligned); a column the wire still leaves ambiguous is read
event by event from the ordinary decode instead, which is otherwise only
done for bad requests. The checks run per batch, on numpy arrays or on the
per-batch string dictionaries (a length check on the distinct screen names,
not on every event). Only when a check fails does ``_violations`` walk the
events one by one, to list every offending field in request order.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from heatmap.errors import FieldViolation, InvalidArgument
from ingest_gateway.columns import dictionary, parse_columns, split
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import EVENT_TYPES, TouchBatch

MAX_EVENTS = 500
MAX_SCREEN_NAME = 200
MAX_CAMPAIGN_ID = 200
MAX_BATCH_ID = 128
MAX_FUTURE_MS = 24 * 3600 * 1000
NANOS_PER_SECOND = 1_000_000_000

_TYPE_NAMES = "TAP, SCROLL, ACTION_CLICK"


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


def to_batch(data: bytes, user_id: str, received_at_ms: int) -> TouchBatch:
    """The serialized request's events as one columnar batch, or ``BatchRejected``
    listing every violation (``Undecodable`` if the bytes are not a request)."""
    try:
        events, batch_id = split(data)
        n = len(events)
        if n == 0 or n > MAX_EVENTS or len(batch_id) > MAX_BATCH_ID:
            raise BatchRejected(_violations(parse(data), received_at_ms))
        columns = parse_columns(events)
    except DecodeError as e:
        raise Undecodable() from e
    # The ordinary decode: only for what the columns leave open (rare).
    request: heatmap_pb2.IngestTouchEventsRequest | None = None

    def each(name: str) -> list[Any]:
        nonlocal request
        if request is None:
            request = parse(data)
        return [getattr(e, name) for e in request.events]

    def column(values: Sequence[Any], name: str) -> Sequence[Any]:
        # Complete on the wire (no default values omitted): take it as parsed.
        return values if len(values) == n else each(name)

    x = np.array(column(columns.x, "x"), dtype=np.float32)
    y = np.array(column(columns.y, "y"), dtype=np.float32)
    event_type = np.array(column(columns.event_type, "event_type"), dtype=np.int64)
    nanos = columns.nanos
    if nanos is not None and len(columns.seconds) in (0, n):
        nano = nanos
        # No seconds anywhere: clients that leave the time to the server (unset
        # and explicit epoch are told apart below).
        sec = np.array(columns.seconds, dtype=np.int64) if columns.seconds else np.zeros_like(nano)
    else:
        stamps = each("timestamp")
        sec = np.array([t.seconds for t in stamps], dtype=np.int64)
        nano = np.array([t.nanos for t in stamps], dtype=np.int64)
    screen_dict, screen_index = dictionary(list(column(columns.screen_name, "screen_name")))
    if columns.campaign is not None:
        campaign_dict, campaign_index = columns.campaign
    else:
        campaign_dict, campaign_index = dictionary(each("campaign_id"))

    # Reductions, not element-wise masks: two per column. NaN propagates through
    # min/max and fails every comparison; inf is out of range.
    first_second = int(sec.min())
    ok = (
        x.min() >= 0.0
        and x.max() <= 1.0
        and y.min() >= 0.0
        and y.max() <= 1.0
        and event_type.min() >= 1
        and event_type.max() <= 3
        and first_second >= 0
        and nano.min() >= 0
        and nano.max() < NANOS_PER_SECOND
        and min(map(len, screen_dict)) > 0
        and max(map(len, screen_dict)) <= MAX_SCREEN_NAME
        and max(map(len, campaign_dict)) <= MAX_CAMPAIGN_ID
    )
    if not ok:
        raise BatchRejected(_violations(request or parse(data), received_at_ms))
    timestamp_ms = sec * 1000 + nano // 1_000_000
    if first_second == 0 and (unset := (sec == 0) & (nano == 0)).any():
        # Absent on the wire and explicitly the epoch both read as (0, 0):
        # only those events pay for the presence check.
        if not columns.any_timestamp_field():  # a fleet leaving the time to the server
            timestamp_ms[unset] = received_at_ms
        else:
            if request is None:
                request = parse(data)
            has = request.events.__getitem__
            absent = [i for i in np.flatnonzero(unset).tolist() if not has(i).HasField("timestamp")]
            timestamp_ms[absent] = received_at_ms
    if int(timestamp_ms.max()) > received_at_ms + MAX_FUTURE_MS:
        raise BatchRejected(_violations(request or parse(data), received_at_ms))

    client_batch_id = bool(batch_id)
    return TouchBatch(
        user_id=user_id,
        batch_id=batch_id if client_batch_id else uuid.uuid4().hex,
        client_batch_id=client_batch_id,
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


def _violations(
    request: heatmap_pb2.IngestTouchEventsRequest, received_at_ms: int
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
        out.extend(_event_violations(f"events[{i}]", event, received_at_ms))
    return out


def _event_violations(
    path: str, event: heatmap_pb2.TouchEvent, received_at_ms: int
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
        elif not 0.0 <= value <= 1.0:
            out.append(FieldViolation(f"{path}.{name}", f"must be within [0, 1], got {value}"))
    if event.HasField("timestamp"):
        ts = event.timestamp
        if not 0 <= ts.nanos < NANOS_PER_SECOND:
            out.append(
                FieldViolation(f"{path}.timestamp", f"nanos must be in [0, 1e9), got {ts.nanos}")
            )
        elif ts.seconds < 0:
            out.append(FieldViolation(f"{path}.timestamp", "before 1970-01-01T00:00:00Z"))
        elif ts.seconds * 1000 + ts.nanos // 1_000_000 > received_at_ms + MAX_FUTURE_MS:
            out.append(FieldViolation(f"{path}.timestamp", "more than 24 h in the future"))
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
                f"{path}.event_type", f"must be one of {_TYPE_NAMES}, got {event.event_type}"
            )
        )
    return out
