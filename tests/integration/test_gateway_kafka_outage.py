"""Kafka goes away and comes back: UNAVAILABLE within the deadline, NOT_SERVING, then recovery.

Uses a private broker (not the session one) so it can be stopped and started
again on the same port with its data.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from heatmap.settings import KafkaSettings, Settings
from heatmap_devtools.localinfra.kafka import KafkaBroker
from tests.conftest import create_topic, unique
from tests.integration.test_gateway_support import (
    auth,
    batch_ids,
    gateway_settings,
    ingest_request,
    read_topic,
    running_gateway,
    wait_health,
)

PUBLISH_TIMEOUT_S = 2.0


async def test_broker_down_gives_unavailable_within_the_deadline_and_recovers(
    base_settings: Settings, broker: KafkaBroker
) -> None:
    topic = unique("outage")
    create_topic(broker.bootstrap, topic)
    kafka = KafkaSettings(
        bootstrap=broker.bootstrap, topic=topic, publish_timeout_s=PUBLISH_TIMEOUT_S
    )
    async with running_gateway(gateway_settings(base_settings, kafka)) as gw:
        await gw.stub.IngestTouchEvents(ingest_request(5, "before"), metadata=auth("d"))

        await asyncio.to_thread(broker.stop)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub.IngestTouchEvents(ingest_request(5, "lost-1"), metadata=auth("d"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < PUBLISH_TIMEOUT_S + 1.0

        # A caller's deadline shorter than the publish timeout: UNAVAILABLE before it.
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub.IngestTouchEvents(
                ingest_request(5, "lost-2"), metadata=auth("d"), timeout=1.0
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 1.0

        await wait_health(gw.channel, health_pb2.HealthCheckResponse.NOT_SERVING, 15)
        assert gw.metric("heatmap_gateway_requests_total", {"outcome": "unavailable"}) == 2

        await asyncio.to_thread(broker.start)
        deadline = time.monotonic() + 60
        codes: list[grpc.StatusCode] = []
        reply = None
        while reply is None and time.monotonic() < deadline:
            try:
                reply = await gw.stub.IngestTouchEvents(
                    ingest_request(5, "after"), metadata=auth("d")
                )
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
                await asyncio.sleep(0.5)
        assert reply is not None, f"gateway did not recover: {codes}"
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
        assert reply.ingested_count == 5
        await wait_health(gw.channel, health_pb2.HealthCheckResponse.SERVING, 15)
        # And keeps working.
        for i in range(5):
            await gw.stub.IngestTouchEvents(ingest_request(5, f"later-{i}"), metadata=auth("d"))

    records = read_topic(broker.bootstrap, topic, 7, settle_s=1.0)
    # A call answered UNAVAILABLE may still have reached Kafka (its delivery
    # report came after the timeout): that is why clients retry with the same
    # batch_id and the worker deduplicates. Every acknowledged batch is there.
    ids = list(dict.fromkeys(batch_ids(records)))
    acked = ["before", "after", *[f"later-{i}" for i in range(5)]]
    assert [i for i in ids if i in acked] == acked
