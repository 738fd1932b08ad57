"""Helpers for the gateway's integration tests (no tests here): servers, requests, Kafka reads."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import grpc
from confluent_kafka import Consumer, TopicPartition
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from heatmap.auth import mint_token
from heatmap.settings import KafkaSettings, Settings
from ingest_gateway.app import Gateway
from ingest_gateway.publisher import EventPublisher
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import serving

INGEST = "/heatmap.v1.HeatmapService/IngestTouchEvents"


@dataclass
class Running:
    port: int
    gateway: Gateway
    registry: CollectorRegistry
    channel: grpc.aio.Channel

    @property
    def stub(self) -> heatmap_pb2_grpc.HeatmapServiceStub:
        return heatmap_pb2_grpc.HeatmapServiceStub(self.channel)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value


def gateway_settings(base: Settings, kafka: KafkaSettings, **server: object) -> Settings:
    return replace(base, kafka=kafka, server=replace(base.server, **server))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, publisher: EventPublisher | None = None, wait_serving: bool = True
) -> AsyncIterator[Running]:
    """The real ``serve()`` with a Gateway on a loopback port 0; stopped on exit."""
    registry = CollectorRegistry()
    gateway = Gateway(settings, registry, publisher)
    async with (
        serving(settings, [gateway], registry) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        running = Running(port, gateway, registry, channel)
        if wait_serving:
            await wait_health(channel, health_pb2.HealthCheckResponse.SERVING)
        yield running


async def wait_health(channel: grpc.aio.Channel, status: int, timeout_s: float = 30.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="heatmap.v1.HeatmapService"))
        last = reply.status
        if last == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health stayed {last}, wanted {status}")


def auth(user_id: str = "device-1") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(TEST_JWT_SECRET, user_id, [])}"),)


def touch(
    screen: str = "Home",
    x: float = 0.5,
    y: float = 0.5,
    kind: int = 1,
    campaign: str = "",
    ts_ms: int | None = None,
) -> heatmap_pb2.TouchEvent:
    event = heatmap_pb2.TouchEvent(
        screen_name=screen,
        x=x,
        y=y,
        event_type=heatmap_pb2.TouchEventType.ValueType(kind),
        campaign_id=campaign,
    )
    if ts_ms is not None:
        event.timestamp.FromMilliseconds(ts_ms)
    return event


def ingest_request(n: int = 10, batch_id: str = "") -> heatmap_pb2.IngestTouchEventsRequest:
    return heatmap_pb2.IngestTouchEventsRequest(
        events=[touch(x=(i % 11) / 10, y=((i * 7) % 11) / 10, kind=1 + i % 3) for i in range(n)],
        batch_id=batch_id,
    )


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int


def read_topic(
    bootstrap: str, topic: str, expect: int, timeout_s: float = 30.0, settle_s: float = 0.0
) -> list[Record]:
    """Every record of ``topic`` from the start: at least ``expect`` of them (then ``settle_s``
    more seconds to catch extras), in partition order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                if len(out) >= expect and settle_until is None:
                    settle_until = time.monotonic() + settle_s
                continue
            value = msg.value()
            assert value is not None
            headers: dict[str, bytes] = {}
            for header in msg.headers() or []:
                if isinstance(header[1], bytes):
                    headers[str(header[0])] = header[1]
            out.append(Record(msg.key(), value, headers, msg.partition() or 0))
        return out
    finally:
        consumer.close()


def batch_ids(records: Sequence[Record]) -> list[str]:
    from schemas.touch_batch import decode_batch

    return [decode_batch(r.value).batch_id for r in records]
