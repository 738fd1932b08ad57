"""The gateway over a real gRPC channel and a real Kafka broker: content, codes, limits, metrics."""

from __future__ import annotations

import asyncio
import math
import time

import grpc
import jwt
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from heatmap.auth import mint_token
from heatmap.settings import KafkaSettings, Settings
from heatmap_devtools.localinfra.process import free_port
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import decode_batch
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import bad_request_fields
from tests.integration.test_gateway_support import (
    INGEST,
    Running,
    auth,
    batch_ids,
    gateway_settings,
    ingest_request,
    read_topic,
    running_gateway,
    touch,
    wait_health,
)


@pytest.fixture
async def gw(base_settings: Settings, kafka_settings: KafkaSettings) -> Running:  # type: ignore[misc]
    async with running_gateway(gateway_settings(base_settings, kafka_settings)) as running:
        yield running


async def test_published_batches_read_back_exactly(
    gw: Running, kafka_settings: KafkaSettings
) -> None:
    before_ms = time.time_ns() // 1_000_000
    t0 = before_ms - 3_600_000  # inside the accepted age
    first = heatmap_pb2.IngestTouchEventsRequest(
        events=[
            touch("Home", 0.0, 1.0, 1, "", ts_ms=t0),
            touch("Cart", 0.25, 0.75, 3, "spring-sale"),
            touch("Home", 1.0, 0.0, 2, "spring-sale", ts_ms=t0 + 500),
        ],
        batch_id="client-key-1",
    )
    reply = await gw.stub.IngestTouchEvents(first, metadata=auth("device-A"))
    assert reply.ingested_count == 3
    reply = await gw.stub.IngestTouchEvents(ingest_request(500), metadata=auth("device-B"))
    assert reply.ingested_count == 500
    after_ms = time.time_ns() // 1_000_000

    records = read_topic(kafka_settings.bootstrap or "", kafka_settings.topic, 2, settle_s=1.0)
    assert len(records) == 2, "one Kafka message per request, not per event"
    by_key = {r.key: r for r in records}
    a = by_key[b"device-A"]
    assert a.headers == {"format": b"touch_batch.v1"}
    batch = decode_batch(a.value)
    assert batch.user_id == "device-A"
    assert batch.batch_id == "client-key-1"
    assert batch.client_batch_id is True
    assert before_ms <= batch.received_at_ms <= after_ms
    assert batch.screen_dict == ["Home", "Cart"]
    assert batch.screen_index.tolist() == [0, 1, 0]
    assert batch.campaign_dict == ["", "spring-sale"]
    assert batch.campaign_index.tolist() == [0, 1, 1]
    assert batch.x.tolist() == [0.0, 0.25, 1.0]
    assert batch.y.tolist() == [1.0, 0.75, 0.0]
    assert batch.timestamp_ms.tolist() == [
        t0,
        batch.received_at_ms,
        t0 + 500,
    ]
    assert batch.event_type.tolist() == [1, 3, 2]

    b = decode_batch(by_key[b"device-B"].value)
    sent = ingest_request(500)
    assert b.client_batch_id is False
    assert len(b.batch_id) == 32
    assert len(b) == 500
    assert b.x.tolist() == [pytest.approx(e.x) for e in sent.events]
    assert b.event_type.tolist() == [e.event_type for e in sent.events]
    assert (b.timestamp_ms == b.received_at_ms).all()

    assert gw.metric("heatmap_gateway_requests_total", {"outcome": "accepted"}) == 2
    assert gw.metric("heatmap_gateway_events_total") == 503
    assert gw.metric("heatmap_gateway_publish_seconds_count") == 2


async def test_same_user_keeps_one_partition_and_retries_carry_the_key(
    gw: Running, kafka_settings: KafkaSettings
) -> None:
    for i in range(6):
        await gw.stub.IngestTouchEvents(ingest_request(2, batch_id="same"), metadata=auth("u-1"))
        await gw.stub.IngestTouchEvents(ingest_request(2, batch_id=f"b{i}"), metadata=auth("u-2"))
    records = read_topic(kafka_settings.bootstrap or "", kafka_settings.topic, 12)
    partitions = {r.key: {x.partition for x in records if x.key == r.key} for r in records}
    assert all(len(p) == 1 for p in partitions.values())
    # The gateway does not dedup: both copies travel with the client's key.
    u1 = [decode_batch(r.value) for r in records if r.key == b"u-1"]
    assert [(b.batch_id, b.client_batch_id) for b in u1] == [("same", True)] * 6
    u2 = sorted(records, key=lambda r: r.partition)
    assert [i for i in batch_ids([r for r in u2 if r.key == b"u-2"])] == [f"b{i}" for i in range(6)]


async def test_invalid_requests_publish_nothing_and_name_every_field(
    gw: Running, kafka_settings: KafkaSettings
) -> None:
    bad = heatmap_pb2.IngestTouchEventsRequest(
        events=[touch(), touch(x=math.nan), touch(), touch(x=1.0001, kind=0), touch(screen="")],
        batch_id="bad-one",
    )
    call = gw.stub.IngestTouchEvents(bad, metadata=auth("device-X"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await bad_request_fields(call) == [
        "events[1].x",
        "events[3].x",
        "events[3].event_type",
        "events[4].screen_name",
    ]
    for n in (0, 501):
        call = gw.stub.IngestTouchEvents(ingest_request(n), metadata=auth("device-X"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await bad_request_fields(call) == ["events"]
    # A valid call after them, on the same key (same partition, in order): it is the only record.
    await gw.stub.IngestTouchEvents(ingest_request(1, batch_id="good"), metadata=auth("device-X"))
    records = read_topic(kafka_settings.bootstrap or "", kafka_settings.topic, 1, settle_s=1.0)
    assert batch_ids(records) == ["good"]
    assert gw.metric("heatmap_gateway_requests_total", {"outcome": "rejected"}) == 3
    assert gw.metric("heatmap_gateway_rejections_total", {"reason": "events.x"}) == 1
    assert gw.metric("heatmap_gateway_rejections_total", {"reason": "events.event_type"}) == 1
    assert gw.metric("heatmap_gateway_rejections_total", {"reason": "events"}) == 2


async def test_undecodable_bytes_are_invalid_argument(gw: Running) -> None:
    raw = gw.channel.unary_unary(INGEST)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff", metadata=auth())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _tokens() -> dict[str, tuple[tuple[str, str], ...]]:
    now = int(time.time())
    return {
        "missing": (),
        "not bearer": (("authorization", "Basic dXNlcjpwYXNz"),),
        "empty bearer": (("authorization", "Bearer "),),
        "malformed": (("authorization", "Bearer not-a-jwt"),),
        "wrong secret": (("authorization", f"Bearer {mint_token('x' * 40, 'device-1')}"),),
        "expired": (
            ("authorization", f"Bearer {mint_token(TEST_JWT_SECRET, 'device-1', ttl_s=-3600)}"),
        ),
        "no sub": (
            (
                "authorization",
                "Bearer " + jwt.encode({"exp": now + 600}, TEST_JWT_SECRET, algorithm="HS256"),
            ),
        ),
        "no exp": (
            (
                "authorization",
                "Bearer " + jwt.encode({"sub": "device-1"}, TEST_JWT_SECRET, algorithm="HS256"),
            ),
        ),
        "alg none": (
            (
                "authorization",
                "Bearer " + jwt.encode({"sub": "d", "exp": now + 600}, "", algorithm="none"),
            ),
        ),
    }


async def test_each_auth_failure_is_unauthenticated_and_publishes_nothing(
    gw: Running, kafka_settings: KafkaSettings
) -> None:
    for name, metadata in _tokens().items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub.IngestTouchEvents(ingest_request(3), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
    # Any valid token works, no permission needed; its `sub` is the key.
    await gw.stub.IngestTouchEvents(ingest_request(1, "ok"), metadata=auth("no-perms-user"))
    records = read_topic(kafka_settings.bootstrap or "", kafka_settings.topic, 1, settle_s=1.0)
    assert [(r.key, decode_batch(r.value).user_id) for r in records] == [
        (b"no-perms-user", "no-perms-user")
    ]


async def test_oversized_message_is_resource_exhausted_and_the_server_keeps_serving(
    base_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    # The gRPC transport limit (what `heatmap gateway` sets to 1 MiB).
    settings = gateway_settings(base_settings, kafka_settings, max_message_bytes=256 * 1024)
    async with running_gateway(settings) as gw:
        huge = ingest_request(10, batch_id="b" * (300 * 1024))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub.IngestTouchEvents(huge, metadata=auth())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = await gw.stub.IngestTouchEvents(ingest_request(500), metadata=auth())
        assert reply.ingested_count == 500


async def test_handler_limit_applies_under_a_larger_server_limit(
    base_settings: Settings, kafka_settings: KafkaSettings
) -> None:
    # Embedded mode: the shared server takes 16 MiB (screenshots); the gateway still caps at 1 MiB.
    settings = gateway_settings(base_settings, kafka_settings, max_message_bytes=16 << 20)
    async with running_gateway(settings) as gw:
        huge = ingest_request(10, batch_id="b" * (1100 * 1024))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await gw.stub.IngestTouchEvents(huge, metadata=auth())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert gw.metric("heatmap_gateway_rejections_total", {"reason": "too_large"}) == 1
        reply = await gw.stub.IngestTouchEvents(ingest_request(5), metadata=auth())
        assert reply.ingested_count == 5


async def test_health_and_reflection(gw: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)

    async def ask() -> list[str]:
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.done_writing()
        reply = await call.read()
        return [s.name for s in reply.list_services_response.service]

    names = await ask()
    assert "heatmap.v1.HeatmapService" in names
    assert "grpc.health.v1.Health" in names


async def test_unreachable_broker_at_start_does_not_block_and_health_says_not_serving(
    base_settings: Settings,
) -> None:
    kafka = KafkaSettings(
        bootstrap=f"127.0.0.1:{free_port()}",
        topic="nowhere",
        publish_timeout_s=1.0,
        producer_queue_max_messages=1,
    )
    settings = gateway_settings(base_settings, kafka)
    started = time.monotonic()
    async with running_gateway(settings, wait_serving=False) as gw:
        assert time.monotonic() - started < 5
        from grpc_health.v1 import health_pb2

        await wait_health(gw.channel, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert not gw.gateway.healthy()
        first = asyncio.ensure_future(gw.stub.IngestTouchEvents(ingest_request(2), metadata=auth()))
        await asyncio.sleep(0.2)
        # The bounded producer queue (1 message here) is full: backpressure, not memory.
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await gw.stub.IngestTouchEvents(ingest_request(2), metadata=auth())
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        t0 = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await first
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 2.0
        assert gw.metric("heatmap_gateway_rejections_total", {"reason": "queue_full"}) == 1
        assert gw.metric("heatmap_gateway_rejections_total", {"reason": "publish_failed"}) == 1
        assert gw.metric("heatmap_gateway_kafka_healthy") == 0
