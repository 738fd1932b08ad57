"""INVALID_ARGUMENT for a hostile 500-event request, through the real gateway on real Kafka.

Before the bound, 500 events with several bad fields each made a ~117 KB
``grpc-status-details-bin`` trailer: grpc-python then reported
RESOURCE_EXHAUSTED ("received metadata size exceeds hard limit") instead of
the server's INVALID_ARGUMENT, and grpc-java refuses anything over 8 KiB.
"""

from __future__ import annotations

import base64
import math

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import _async as rpc_status_async

from heatmap.errors import MAX_FIELD_VIOLATIONS
from heatmap.settings import KafkaSettings, Settings
from schemas.heatmap.v1 import heatmap_pb2
from tests.integration.test_gateway_support import (
    auth,
    gateway_settings,
    read_topic,
    running_gateway,
    touch,
)

WIRE_LIMIT = 8192


def hostile_event(i: int) -> heatmap_pb2.TouchEvent:
    """Several bad fields at once, with long strings and huge numbers a client controls."""
    event = touch(screen="S" * 400 + str(i), x=math.nan, y=3.4e38, kind=99, campaign="C" * 400)
    event.timestamp.seconds = -(2**62)
    return event


async def test_500_bad_events_give_invalid_argument_with_a_small_trailer(
    base_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    request = heatmap_pb2.IngestTouchEventsRequest(
        events=[hostile_event(i) for i in range(500)], batch_id="B" * 400
    )
    async with running_gateway(gateway_settings(base_settings, kafka_settings)) as gw:
        call = gw.stub.IngestTouchEvents(request, metadata=auth("hostile"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert len(err.value.details() or "") <= 256

        trailers = await call.trailing_metadata()
        raw = dict(trailers)["grpc-status-details-bin"]
        assert isinstance(raw, bytes)
        # Binary trailers travel base64-encoded; the status message travels twice
        # (grpc-message, percent-encoded, and inside the Status).
        wire = sum(
            len(k) + (len(base64.b64encode(v)) if isinstance(v, bytes) else len(v) * 3)
            for k, v in trailers
        )
        assert wire < WIRE_LIMIT, wire

        status = await rpc_status_async.from_call(call)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        listed = list(bad.field_violations)
        assert len(listed) <= MAX_FIELD_VIOLATIONS + 1
        assert listed[0].field.startswith(("batch_id", "events[0]."))
        *shown, last = listed
        assert last.field == ""
        left_off = int(last.description.split()[0])
        # 1 batch_id violation + 6 per event (screen, x, y, timestamp, campaign, type).
        assert len(shown) + left_off == 1 + 500 * 6, (len(shown), left_off)

        # Nothing was published; a valid call still goes through.
        good = heatmap_pb2.IngestTouchEventsRequest(events=[touch()], batch_id="good")
        assert (await gw.stub.IngestTouchEvents(good, metadata=auth("hostile"))).ingested_count == 1
    records = read_topic(kafka_settings.bootstrap or "", kafka_settings.topic, 1, settle_s=1.0)
    assert [r.key for r in records] == [b"hostile"]
