"""The Kafka fixture is a real broker: both client libraries round-trip through it."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer


def test_confluent_kafka_produce_and_consume(kafka_bootstrap: str, topic: str) -> None:
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    sent = [f"message-{i}".encode() for i in range(50)]
    for i, value in enumerate(sent):
        producer.produce(topic, value=value, key=f"user-{i % 5}".encode())
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"g-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    received: list[bytes] = []
    try:
        for _ in range(200):
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                if len(received) == len(sent):
                    break
                continue
            payload = msg.value()
            assert payload is not None
            received.append(payload)
            if len(received) == len(sent):
                break
    finally:
        consumer.close()
    assert sorted(received) == sorted(sent)


def test_aiokafka_produce_and_consume_lz4(kafka_bootstrap: str, topic: str) -> None:
    """aiokafka is Faust's client: it must read lz4 batches (its codec extra)."""

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, acks="all", compression_type="lz4"
        )
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, f"aio-{i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            group_id=f"g-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(60):
                while len(got) < 20:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        got.extend(r.value for r in records if r.value is not None)
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == [f"aio-{i}".encode() for i in range(20)]
