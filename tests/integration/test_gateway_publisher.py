"""KafkaPublisher against the real broker: acknowledged means on the topic, reports
served from the event loop, and no polling once nothing is outstanding."""

from __future__ import annotations

import asyncio

from heatmap.settings import KafkaSettings
from ingest_gateway.publisher import KafkaPublisher
from tests.integration.test_gateway_support import read_topic


def pump_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "KafkaPublisher._pump_reports"
    ]


async def test_concurrent_publishes_are_acknowledged_then_the_pump_stops(
    kafka_settings: KafkaSettings,
) -> None:
    publisher = KafkaPublisher(kafka_settings)
    await publisher.start()
    try:
        values = [f"batch-{i}".encode() for i in range(200)]
        calls = [
            asyncio.create_task(publisher.publish(f"user-{i % 7}".encode(), v))
            for i, v in enumerate(values)
        ]
        await asyncio.sleep(0)
        assert len(pump_tasks()) == 1  # one pump serves every outstanding call
        await asyncio.gather(*calls)
        assert publisher.healthy()
        assert publisher.queued() == 0
        # Reports all served: the pump has nothing left to poll for and ends.
        for _ in range(100):
            if not pump_tasks():
                break
            await asyncio.sleep(0.01)
        assert pump_tasks() == []
        # A later call starts it again.
        await publisher.publish(b"user-0", b"late")
    finally:
        await publisher.stop()
    assert kafka_settings.bootstrap
    records = await asyncio.to_thread(
        read_topic, kafka_settings.bootstrap, kafka_settings.topic, len(values) + 1, 30.0, 0.5
    )
    assert sorted(r.value for r in records) == sorted([*values, b"late"])
    assert {r.key for r in records} == {f"user-{i}".encode() for i in range(7)}
