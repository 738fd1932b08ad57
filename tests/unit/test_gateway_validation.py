"""ingest_gateway.validation: every rule and boundary, violations in order, the columnar result."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from heatmap.errors import InvalidArgument
from ingest_gateway.columns import parse_columns, split
from ingest_gateway.validation import BatchRejected, Undecodable, implicit_batch_id, to_batch
from schemas.event_rules import DEFAULT_MAX_EVENT_AGE_S
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import TouchBatch, decode_batch, encode_batch

NOW_MS = 1_790_000_000_123
DAY_MS = 24 * 3600 * 1000


def event(**fields: Any) -> heatmap_pb2.TouchEvent:
    ts_ms = fields.pop("ts_ms", None)
    values: dict[str, Any] = {"screen_name": "Home", "x": 0.5, "y": 0.5, "event_type": 1}
    values.update(fields)
    ev = heatmap_pb2.TouchEvent(**values)
    if ts_ms is not None:
        ev.timestamp.FromMilliseconds(ts_ms)
    return ev


def request(
    *events: heatmap_pb2.TouchEvent, batch_id: str = ""
) -> heatmap_pb2.IngestTouchEventsRequest:
    return heatmap_pb2.IngestTouchEventsRequest(events=events, batch_id=batch_id)


def build(
    req: heatmap_pb2.IngestTouchEventsRequest, user_id: str = "u", now_ms: int = NOW_MS
) -> TouchBatch:
    return to_batch(req.SerializeToString(), user_id, now_ms)


def fields_of(req: heatmap_pb2.IngestTouchEventsRequest) -> list[str]:
    with pytest.raises(BatchRejected) as err:
        build(req, "user-1")
    assert isinstance(err.value, InvalidArgument)
    assert err.value.violations, "a rejection must name at least one field"
    return [v.field for v in err.value.violations]


# ------------------------------------------------------------------ counts


def test_zero_events_is_invalid() -> None:
    assert fields_of(request()) == ["events"]


def test_500_events_is_accepted_and_501_is_not() -> None:
    assert len(build(request(*[event()] * 500))) == 500
    assert fields_of(request(*[event()] * 501)) == ["events"]


def test_one_event_is_accepted() -> None:
    assert len(build(request(event()))) == 1


# ------------------------------------------------------------------ strings


@pytest.mark.parametrize("length", [1, 200])
def test_screen_name_boundaries_accepted(length: int) -> None:
    batch = build(request(event(screen_name="s" * length)))
    assert batch.screen_dict == ["s" * length]


@pytest.mark.parametrize("name", ["", "s" * 201])
def test_screen_name_boundaries_rejected(name: str) -> None:
    assert fields_of(request(event(), event(screen_name=name))) == ["events[1].screen_name"]


def test_lengths_count_characters_not_bytes() -> None:
    batch = build(request(event(screen_name="é" * 200, campaign_id="ß" * 200)))
    assert batch.screen_dict == ["é" * 200]
    assert fields_of(request(event(screen_name="é" * 201))) == ["events[0].screen_name"]


def test_campaign_id_boundaries() -> None:
    batch = build(request(event(campaign_id="c" * 200), event()))
    assert [batch.campaign_dict[i] for i in batch.campaign_index] == ["c" * 200, ""]
    assert fields_of(request(event(campaign_id="c" * 201))) == ["events[0].campaign_id"]


def test_batch_id_boundaries() -> None:
    batch = build(request(event(), batch_id="b" * 128))
    assert batch.batch_id == "b" * 128
    assert batch.client_batch_id is True
    assert fields_of(request(event(), batch_id="b" * 129)) == ["batch_id"]


def test_missing_batch_id_gets_a_generated_one() -> None:
    first = build(request(event()))
    second = build(request(event()))
    assert first.client_batch_id is False
    assert len(first.batch_id) == 32
    int(first.batch_id, 16)  # uuid4 hex
    assert first.batch_id != second.batch_id


def test_without_batch_id_but_with_every_event_time_the_request_bytes_are_the_key() -> None:
    req = request(event(ts_ms=NOW_MS - 1_000), event(ts_ms=NOW_MS - 2_000))
    first, retry = build(req, "device-1"), build(req, "device-1", now_ms=NOW_MS + 5_000)
    assert first.client_batch_id is True  # deduplicated by the worker like a client's own
    assert (
        first.batch_id == retry.batch_id == implicit_batch_id("device-1", req.SerializeToString())
    )
    assert first.batch_id.startswith("implicit:")
    assert len(first.batch_id) <= 128
    assert build(req, "device-2").batch_id != first.batch_id  # per user
    other = request(event(ts_ms=NOW_MS - 1_000), event(ts_ms=NOW_MS - 2_001))
    assert build(other, "device-1").batch_id != first.batch_id
    # One event without a time: identical genuine requests are possible, so no key.
    partial = build(request(event(ts_ms=NOW_MS - 1_000), event()), "device-1")
    assert partial.client_batch_id is False
    # A client's own batch_id always wins.
    assert build(request(event(ts_ms=NOW_MS), batch_id="mine")).batch_id == "mine"


# ------------------------------------------------------------------ coordinates


@pytest.mark.parametrize("value", [0.0, 1.0, -0.0, 0.25])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_coordinates_accepted(axis: str, value: float) -> None:
    batch = build(request(event(**{axis: value})))
    assert float(getattr(batch, axis)[0]) == value


@pytest.mark.parametrize("value", [-0.0001, 1.0001, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_coordinates_rejected(axis: str, value: float) -> None:
    assert fields_of(request(event(), event(), event(), event(**{axis: value}))) == [
        f"events[3].{axis}"
    ]


# ------------------------------------------------------------------ event type


@pytest.mark.parametrize("kind", [1, 2, 3])
def test_event_types_accepted(kind: int) -> None:
    assert build(request(event(event_type=kind))).event_type.tolist() == [kind]


@pytest.mark.parametrize("kind", [0, 4, 99, -1])
def test_unspecified_and_unknown_event_types_rejected(kind: int) -> None:
    assert fields_of(request(event(event_type=kind))) == ["events[0].event_type"]


# ------------------------------------------------------------------ timestamps


def test_unset_timestamp_gets_receive_time_and_explicit_epoch_is_too_old() -> None:
    epoch = event()
    epoch.timestamp.SetInParent()  # explicitly 1970-01-01T00:00:00Z
    batch = build(request(event(), event(ts_ms=NOW_MS - 5000)))
    assert batch.timestamp_ms.tolist() == [NOW_MS, NOW_MS - 5000]
    assert batch.received_at_ms == NOW_MS
    assert fields_of(request(event(), epoch, event(ts_ms=NOW_MS - 5000))) == ["events[1].timestamp"]


def test_the_accepted_age_ends_exactly_at_max_event_age() -> None:
    oldest = NOW_MS - DEFAULT_MAX_EVENT_AGE_S * 1000
    assert build(request(event(ts_ms=oldest))).timestamp_ms.tolist() == [oldest]
    assert fields_of(request(event(ts_ms=oldest - 1))) == ["events[0].timestamp"]
    # A configured age moves the bound.
    req = request(event(ts_ms=NOW_MS - 3_601_000)).SerializeToString()
    assert to_batch(req, "u", NOW_MS, max_event_age_s=3_602).timestamp_ms.tolist() == [
        NOW_MS - 3_601_000
    ]
    with pytest.raises(BatchRejected, match=re.escape("events[0].timestamp")):
        to_batch(req, "u", NOW_MS, max_event_age_s=3_600)


def test_too_old_says_so_and_names_the_setting() -> None:
    with pytest.raises(BatchRejected) as err:
        build(request(event(ts_ms=NOW_MS - 400 * DAY_MS)))
    (violation,) = err.value.violations
    assert "older than" in violation.description
    assert "HEATMAP_MAX_EVENT_AGE_S" in violation.description


@pytest.mark.parametrize(
    "seconds",
    [
        2**63 // 1000 + 1,  # wrapped to 1970 once scaled to ms in int64
        2**62,  # wrapped into 1970-01-01's hour
        2**63 - 1,
        -(2**63),
        (NOW_MS + DAY_MS) // 1000 + 1,
        2**32,
    ],
)
def test_seconds_anywhere_in_int64_never_overflow_into_the_window(seconds: int) -> None:
    ev = event()
    ev.timestamp.seconds = seconds
    # With a valid event beside it, all or nothing: the batch is rejected, the
    # bad event named, nothing acknowledged.
    assert fields_of(request(event(ts_ms=NOW_MS), ev)) == ["events[1].timestamp"]
    assert fields_of(request(ev, *[event()] * 499)) == ["events[0].timestamp"]


def test_timestamp_24h_ahead_is_the_last_accepted() -> None:
    batch = build(request(event(ts_ms=NOW_MS + DAY_MS)))
    assert batch.timestamp_ms.tolist() == [NOW_MS + DAY_MS]
    assert fields_of(request(event(ts_ms=NOW_MS + DAY_MS + 1))) == ["events[0].timestamp"]


def test_timestamp_truncates_to_milliseconds() -> None:
    ev = event()
    ev.timestamp.seconds, ev.timestamp.nanos = 1_789_999_000, 999_999_999
    assert build(request(ev)).timestamp_ms.tolist() == [1_789_999_000_999]


@pytest.mark.parametrize(("seconds", "nanos"), [(-1, 0), (-1, 999_999_999), (10, -1), (10, 10**9)])
def test_timestamps_before_1970_or_with_bad_nanos_rejected(seconds: int, nanos: int) -> None:
    ev = event()
    ev.timestamp.seconds, ev.timestamp.nanos = seconds, nanos
    assert fields_of(request(ev)) == ["events[0].timestamp"]


# ------------------------------------------------------------------ all-or-nothing


def test_every_violation_is_listed_in_request_order() -> None:
    req = request(
        event(x=2.0, y=math.nan),
        event(),
        event(screen_name="", event_type=0, campaign_id="c" * 201),
        event(ts_ms=NOW_MS + 2 * DAY_MS),
        batch_id="b" * 129,
    )
    assert fields_of(req) == [
        "batch_id",
        "events[0].x",
        "events[0].y",
        "events[2].screen_name",
        "events[2].campaign_id",
        "events[2].event_type",
        "events[3].timestamp",
    ]


def test_reasons_drop_indexes() -> None:
    with pytest.raises(BatchRejected) as err:
        build(request(event(x=2.0), event(x=-1.0, event_type=0)))
    assert err.value.reasons == {"events.x", "events.event_type"}


def test_violation_descriptions_say_what_is_wrong() -> None:
    with pytest.raises(BatchRejected) as err:
        build(request(event(x=math.inf)))
    assert "finite" in err.value.violations[0].description


# ------------------------------------------------------------------ columnar result


def test_columns_and_dictionaries_round_trip_through_the_kafka_format() -> None:
    req = request(
        event(screen_name="Home", campaign_id="", x=0.0, y=1.0, event_type=1, ts_ms=NOW_MS - 2_000),
        event(screen_name="Cart", campaign_id="spring", x=0.25, y=0.75, event_type=3),
        event(
            screen_name="Home",
            campaign_id="spring",
            x=1.0,
            y=0.0,
            event_type=2,
            ts_ms=NOW_MS - 1_000,
        ),
        batch_id="retry-key",
    )
    batch = build(req, "device-7", NOW_MS)
    decoded = decode_batch(encode_batch(batch))
    assert decoded.user_id == "device-7"
    assert decoded.batch_id == "retry-key"
    assert decoded.client_batch_id is True
    assert decoded.received_at_ms == NOW_MS
    assert decoded.screen_dict == ["Home", "Cart"]
    assert decoded.screen_index.tolist() == [0, 1, 0]
    assert decoded.campaign_dict == ["", "spring"]
    assert decoded.campaign_index.tolist() == [0, 1, 1]
    assert decoded.x.tolist() == [0.0, 0.25, 1.0]
    assert decoded.y.tolist() == [1.0, 0.75, 0.0]
    assert decoded.timestamp_ms.tolist() == [NOW_MS - 2_000, NOW_MS, NOW_MS - 1_000]
    assert decoded.event_type.tolist() == [1, 3, 2]
    assert batch.x.dtype == np.float32
    assert batch.event_type.dtype == np.uint8


# ------------------------------------------------------------------ wire-level columns


def test_undecodable_bytes() -> None:
    with pytest.raises(Undecodable) as err:
        to_batch(b"\xff\xff\xff", "u", NOW_MS)
    assert err.value.reasons == {"undecodable"}


def test_columns_stay_aligned_when_defaults_are_left_off_the_wire() -> None:
    # x == 0.0, campaign "" and nanos == 0 are not encoded: those columns are
    # shorter than the event list and must be read event by event instead.
    ev = event(x=0.0, y=0.0)
    ev.timestamp.seconds = 1_789_900_000  # nanos 0: not on the wire
    req = request(
        event(x=0.1, campaign_id="a", ts_ms=1_789_900_000_001),
        ev,
        event(x=0.3, y=0.0),  # timestamp unset
        event(x=0.0, campaign_id="b", ts_ms=1_789_900_000_003),
    )
    batch = build(req)
    assert batch.x.tolist() == pytest.approx([0.1, 0.0, 0.3, 0.0])
    assert batch.y.tolist() == [0.5, 0.0, 0.0, 0.5]
    assert [batch.campaign_dict[i] for i in batch.campaign_index] == ["a", "", "", "b"]
    assert batch.timestamp_ms.tolist() == [
        1_789_900_000_001,
        1_789_900_000_000,
        NOW_MS,
        1_789_900_000_003,
    ]


def reference(req: heatmap_pb2.IngestTouchEventsRequest) -> dict[str, list[Any]]:
    """The batch's content computed the obvious way, event by event."""
    ts = [
        e.timestamp.seconds * 1000 + e.timestamp.nanos // 1_000_000
        if e.HasField("timestamp")
        else NOW_MS
        for e in req.events
    ]
    return {
        "screen": [e.screen_name for e in req.events],
        "campaign": [e.campaign_id for e in req.events],
        "x": [e.x for e in req.events],
        "y": [e.y for e in req.events],
        "ts": ts,
        "type": [int(e.event_type) for e in req.events],
    }


def test_fast_path_equals_the_event_by_event_reading_on_random_requests() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 60))
        events = []
        for _ in range(n):
            ev = event(
                screen_name=str(rng.choice(["Home", "Cart", "é" * 3])),
                campaign_id=str(rng.choice(["", "", "c1", "c2"])),
                x=float(rng.choice([0.0, 1.0, rng.random()])),
                y=float(rng.choice([0.0, 1.0, rng.random()])),
                event_type=int(rng.integers(1, 4)),
            )
            kind = rng.integers(0, 4)
            if kind == 1:
                ev.timestamp.FromMilliseconds(int(rng.integers(NOW_MS - 30 * DAY_MS, NOW_MS)))
            elif kind == 2:
                ev.timestamp.seconds = NOW_MS // 1000 - int(rng.integers(0, 3))  # nanos 0
            elif kind == 3:
                ev.timestamp.seconds = NOW_MS // 1000 - 5
                ev.timestamp.nanos = int(rng.integers(0, 10**9))
            events.append(ev)
        req = request(*events)
        batch = build(req)
        want = reference(req)
        assert [batch.screen_dict[i] for i in batch.screen_index] == want["screen"]
        assert [batch.campaign_dict[i] for i in batch.campaign_index] == want["campaign"]
        assert batch.x.tolist() == want["x"]
        assert batch.y.tolist() == want["y"]
        assert batch.timestamp_ms.tolist() == want["ts"]
        assert batch.event_type.tolist() == want["type"]


def test_batches_without_any_event_time_get_the_receive_time() -> None:
    batch = build(request(*[event()] * 500))
    assert (batch.timestamp_ms == NOW_MS).all()
    epoch = event()
    epoch.timestamp.SetInParent()
    # Explicit epochs are told apart from absent times (and are too old), also
    # when nothing but the empty timestamp fields is on the wire.
    assert fields_of(request(event(), epoch, event())) == ["events[1].timestamp"]
    assert fields_of(request(epoch, epoch)) == ["events[0].timestamp", "events[1].timestamp"]


def test_hand_made_encodings_read_like_the_ordinary_decode() -> None:
    # What no standard serializer writes but the wire format allows: an explicit
    # empty campaign, a field repeated inside one event (the last one wins), a
    # timestamp split over two occurrences. The columns' markers no longer line
    # up for those, and the event-by-event reading must give the protobuf answer.
    t = NOW_MS - 10_000
    seconds = heatmap_pb2.TouchEvent()
    seconds.timestamp.seconds = (t + 3_000) // 1000
    plain = event(campaign_id="a", ts_ms=t).SerializeToString()
    explicit_empty = event(ts_ms=t + 1_000).SerializeToString() + b"\x2a\x00"
    repeated = event(campaign_id="first", ts_ms=t + 2_000).SerializeToString() + b"\x2a\x04last"
    split_stamp = (
        event().SerializeToString() + seconds.SerializeToString() + b"\x22\x04\x10\xc0\x84\x3d"
    )
    req_bytes = b"".join(
        b"\x0a" + bytes([len(ev)]) + ev for ev in (plain, explicit_empty, repeated, split_stamp)
    )
    ordinary = heatmap_pb2.IngestTouchEventsRequest.FromString(req_bytes)
    assert [e.campaign_id for e in ordinary.events] == ["a", "", "last", ""]
    assert parse_columns(split(req_bytes)[0]).campaign is None  # the fallback is what runs
    batch = to_batch(req_bytes, "u", NOW_MS)
    want = reference(ordinary)
    assert [batch.campaign_dict[i] for i in batch.campaign_index] == want["campaign"]
    assert (
        batch.timestamp_ms.tolist()
        == want["ts"]
        == [t, t + 1_000, t + 2_000, (t + 3_000) // 1000 * 1000 + 1]
    )


def test_a_nanos_equal_to_the_column_marker_is_rejected_like_any_bad_nanos() -> None:
    ev = event()
    ev.timestamp.seconds = 1_789_000_000
    ev.timestamp.nanos = 1 << 30
    assert fields_of(request(event(ts_ms=NOW_MS), ev)) == ["events[1].timestamp"]


def test_every_event_in_a_campaign_leaves_no_empty_campaign_in_the_dictionary() -> None:
    batch = build(request(event(campaign_id="a"), event(campaign_id="b"), event(campaign_id="a")))
    assert batch.campaign_dict == ["a", "b"]
    assert batch.campaign_index.tolist() == [0, 1, 0]
