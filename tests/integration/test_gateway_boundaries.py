"""Every validation rule and boundary through the real server; Kafka holds exactly the accepted.

The rules themselves are unit-tested in ``tests/unit/test_gateway_validation.py``;
here each boundary goes over gRPC to a gateway publishing to the real broker,
and the topic is read back: accepted batches are there, rejected ones are not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from heatmap.settings import KafkaSettings, Settings
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import decode_batch
from tests.grpc_support import bad_request_fields
from tests.integration.test_gateway_support import (
    auth,
    gateway_settings,
    read_topic,
    running_gateway,
    touch,
)

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Case:
    name: str
    events: Callable[[], list[heatmap_pb2.TouchEvent]]
    fields: tuple[str, ...] = ()  # empty: accepted
    batch_id: str | None = None


def one(**kw: object) -> Callable[[], list[heatmap_pb2.TouchEvent]]:
    return lambda: [touch(), touch(**kw)]  # type: ignore[arg-type]


def ts_event(seconds: int, nanos: int) -> list[heatmap_pb2.TouchEvent]:
    event = touch()
    event.timestamp.seconds, event.timestamp.nanos = seconds, nanos
    return [event]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


CASES = [
    Case("0 events", lambda: [], ("events",)),
    Case("1 event", lambda: [touch()]),
    Case("500 events", lambda: [touch()] * 500),
    Case("501 events", lambda: [touch()] * 501, ("events",)),
    Case("screen 1 char", one(screen="s")),
    Case("screen 200 chars", one(screen="s" * 200)),
    Case("screen 0 chars", one(screen=""), ("events[1].screen_name",)),
    Case("screen 201 chars", one(screen="s" * 201), ("events[1].screen_name",)),
    Case("campaign 200 chars", one(campaign="c" * 200)),
    Case("campaign 201 chars", one(campaign="c" * 201), ("events[1].campaign_id",)),
    Case("x = 0", one(x=0.0)),
    Case("x = 1", one(x=1.0)),
    Case("x = -0.0001", one(x=-0.0001), ("events[1].x",)),
    Case("x = 1.0001", one(x=1.0001), ("events[1].x",)),
    Case("x = NaN", one(x=math.nan), ("events[1].x",)),
    Case("x = inf", one(x=math.inf), ("events[1].x",)),
    Case("x = -inf", one(x=-math.inf), ("events[1].x",)),
    Case("y = 0", one(y=0.0)),
    Case("y = 1", one(y=1.0)),
    Case("y = -0.0001", one(y=-0.0001), ("events[1].y",)),
    Case("y = 1.0001", one(y=1.0001), ("events[1].y",)),
    Case("y = NaN", one(y=math.nan), ("events[1].y",)),
    Case("y = inf", one(y=math.inf), ("events[1].y",)),
    Case("type TAP", one(kind=1)),
    Case("type ACTION_CLICK", one(kind=3)),
    Case("type UNSPECIFIED", one(kind=0), ("events[1].event_type",)),
    Case("type unknown 4", one(kind=4), ("events[1].event_type",)),
    Case("timestamp unset", one()),
    Case("timestamp 23 h ahead", lambda: [touch(ts_ms=now_ms() + DAY_MS - 3_600_000)]),
    Case(
        "timestamp 25 h ahead",
        lambda: [touch(ts_ms=now_ms() + DAY_MS + 3_600_000)],
        ("events[0].timestamp",),
    ),
    Case("timestamp before 1970", lambda: ts_event(-1, 0), ("events[0].timestamp",)),
    Case(
        "timestamp 29 days old",
        lambda: [touch(), touch(ts_ms=now_ms() - 29 * DAY_MS)],
    ),
    Case(
        "timestamp 31 days old",
        lambda: [touch(), touch(ts_ms=now_ms() - 31 * DAY_MS)],
        ("events[1].timestamp",),
    ),
    # int64 seconds that once overflowed into 1970 when scaled to ms (found by hand).
    Case(
        "seconds 2**63 // 1000 + 1",
        lambda: [touch(), *ts_event(2**63 // 1000 + 1, 0)],
        ("events[1].timestamp",),
    ),
    Case("seconds 2**62", lambda: [touch(), *ts_event(2**62, 0)], ("events[1].timestamp",)),
    Case("seconds int64 max", lambda: ts_event(2**63 - 1, 999_999_999), ("events[0].timestamp",)),
    Case("seconds int64 min", lambda: ts_event(-(2**63), 0), ("events[0].timestamp",)),
    Case(
        "12 months in one request",
        lambda: [touch(ts_ms=now_ms() - m * 31 * DAY_MS) for m in range(12)],
        tuple(f"events[{m}].timestamp" for m in range(1, 12)),
    ),
    Case("timestamp nanos 1e9", lambda: ts_event(10, 10**9), ("events[0].timestamp",)),
    Case("timestamp nanos -1", lambda: ts_event(10, -1), ("events[0].timestamp",)),
    Case("batch_id 128 chars", one(), batch_id="k" * 128),
    Case("batch_id 129 chars", one(), ("batch_id",), batch_id="k" * 129),
    Case(
        "several at once",
        lambda: [touch(x=2.0), touch(), touch(screen="", kind=0)],
        ("events[0].x", "events[2].screen_name", "events[2].event_type"),
    ),
]


async def test_each_rule_and_boundary_over_grpc_with_kafka_read_back(
    base_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    problems: list[str] = []
    accepted: dict[str, int] = {}
    rejected: set[str] = set()
    async with running_gateway(gateway_settings(base_settings, kafka_settings)) as gw:
        for i, case in enumerate(CASES):
            batch_id = case.batch_id or f"case-{i}"
            request = heatmap_pb2.IngestTouchEventsRequest(events=case.events(), batch_id=batch_id)
            call = gw.stub.IngestTouchEvents(request, metadata=auth("boundary-user"))
            try:
                reply = await call
            except grpc.aio.AioRpcError as e:
                if not case.fields:
                    problems.append(f"{case.name}: rejected with {e.code().name} {e.details()}")
                elif e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    problems.append(f"{case.name}: {e.code().name}, not INVALID_ARGUMENT")
                elif tuple(fields := await bad_request_fields(call)) != case.fields:
                    problems.append(f"{case.name}: fields {fields}, expected {case.fields}")
                rejected.add(batch_id)
                continue
            if case.fields:
                problems.append(f"{case.name}: accepted, expected {case.fields}")
            elif reply.ingested_count != len(request.events):
                problems.append(f"{case.name}: ingested_count {reply.ingested_count}")
            accepted[batch_id] = len(request.events)
    assert not problems, "\n".join(problems)

    records = read_topic(
        kafka_settings.bootstrap or "", kafka_settings.topic, len(accepted), settle_s=1.0
    )
    published = {b.batch_id: len(b) for b in map(decode_batch, (r.value for r in records))}
    assert published == accepted
    assert not rejected & set(published)
