"""ingest_gateway.app.Gateway without I/O: what reaches the publisher, codes, metrics, deadlines.

The publisher here is an in-memory ``EventPublisher``: these tests cover the
handler's own logic; Kafka itself is exercised in tests/integration.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from prometheus_client import CollectorRegistry

from heatmap.auth import Principal, reset_principal, set_principal
from heatmap.errors import InvalidArgument, ResourceExhausted, Unavailable
from heatmap.settings import KafkaSettings, Settings
from ingest_gateway.app import DEADLINE_MARGIN_S, Gateway
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import decode_batch


@dataclass
class MemoryPublisher:
    fail: Exception | None = None
    up: bool = True
    sent: list[tuple[bytes, bytes, float | None]] = field(default_factory=list)
    started: bool = False

    async def start(self) -> None:
        self.started = True

    async def publish(self, key: bytes, value: bytes, timeout_s: float | None = None) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((key, value, timeout_s))

    def healthy(self) -> bool:
        return self.up

    async def stop(self) -> None:
        self.started = False


class Context:
    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


def settings() -> Settings:
    base = Settings()
    return replace(base, kafka=KafkaSettings(bootstrap="127.0.0.1:1", publish_timeout_s=5.0))


def body(n: int = 3, batch_id: str = "") -> bytes:
    return heatmap_pb2.IngestTouchEventsRequest(
        events=[
            heatmap_pb2.TouchEvent(screen_name="Home", x=0.5, y=0.5, event_type=heatmap_pb2.TAP)
            for _ in range(n)
        ],
        batch_id=batch_id,
    ).SerializeToString()


async def call(gateway: Gateway, data: bytes, remaining: float | None = None) -> int:
    token = set_principal(Principal("user-9", frozenset()))
    try:
        reply = await gateway.ingest(data, Context(remaining))
    finally:
        reset_principal(token)
    return reply.ingested_count


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_accepted_call_publishes_one_message_keyed_by_user() -> None:
    publisher, registry = MemoryPublisher(), CollectorRegistry()
    gateway = Gateway(settings(), registry, publisher)
    assert await call(gateway, body(3, "k1")) == 3
    [(key, value, timeout)] = publisher.sent
    assert key == b"user-9"
    batch = decode_batch(value)
    assert (batch.user_id, batch.batch_id, len(batch)) == ("user-9", "k1", 3)
    assert timeout == 5.0
    assert metric(registry, "heatmap_gateway_requests_total", outcome="accepted") == 1
    assert metric(registry, "heatmap_gateway_events_total") == 3
    assert metric(registry, "heatmap_gateway_in_flight") == 0


async def test_publish_waits_less_than_the_callers_deadline() -> None:
    publisher = MemoryPublisher()
    gateway = Gateway(settings(), CollectorRegistry(), publisher)
    await call(gateway, body(), remaining=0.5)
    assert publisher.sent[0][2] == pytest.approx(0.5 - DEADLINE_MARGIN_S)


@pytest.mark.parametrize(
    ("error", "reason", "outcome"),
    [
        (Unavailable("down"), "publish_failed", "unavailable"),
        (ResourceExhausted("full"), "queue_full", "exhausted"),
    ],
)
async def test_publisher_failures_pass_through_and_are_counted(
    error: Exception, reason: str, outcome: str
) -> None:
    registry = CollectorRegistry()
    gateway = Gateway(settings(), registry, MemoryPublisher(fail=error))
    with pytest.raises(type(error)):
        await call(gateway, body())
    assert metric(registry, "heatmap_gateway_rejections_total", reason=reason) == 1
    assert metric(registry, "heatmap_gateway_requests_total", outcome=outcome) == 1
    assert metric(registry, "heatmap_gateway_events_total") == 0


async def test_too_large_and_invalid_requests_never_reach_the_publisher() -> None:
    publisher, registry = MemoryPublisher(), CollectorRegistry()
    gateway = Gateway(settings(), registry, publisher)
    with pytest.raises(ResourceExhausted):
        await call(gateway, b"\x12" + b"\x00" * (1 << 20))
    with pytest.raises(InvalidArgument):
        await call(gateway, body(0))
    with pytest.raises(InvalidArgument):
        await call(gateway, b"\xff\xff")
    assert publisher.sent == []
    assert metric(registry, "heatmap_gateway_rejections_total", reason="too_large") == 1
    assert metric(registry, "heatmap_gateway_rejections_total", reason="events") == 1
    assert metric(registry, "heatmap_gateway_rejections_total", reason="undecodable") == 1


async def test_component_surface() -> None:
    publisher = MemoryPublisher(up=False)
    gateway = Gateway(settings(), CollectorRegistry(), publisher)
    assert gateway.name == "gateway"
    assert len(gateway.handlers()) == 1
    await gateway.start()
    assert not publisher.started, "a publisher passed in is started and stopped by its owner"
    assert not gateway.healthy()
    publisher.up = True
    assert gateway.healthy()
    await gateway.stop()
