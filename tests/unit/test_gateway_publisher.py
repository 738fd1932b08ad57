"""ingest_gateway.publisher without a broker: the producer configuration and the report hand-off."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import KafkaError, KafkaException

from heatmap.errors import Unavailable
from heatmap.settings import KafkaSettings
from ingest_gateway.publisher import KafkaPublisher, _resolve, producer_config


def test_producer_config_is_durable_bounded_and_from_settings() -> None:
    settings = KafkaSettings(
        bootstrap="127.0.0.1:9092",
        compression="zstd",
        publish_timeout_s=3.5,
        producer_queue_max_messages=1234,
        producer_queue_max_kbytes=4321,
    )
    config = producer_config(settings)
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["compression.type"] == "zstd"
    assert config["message.timeout.ms"] == 3500
    assert config["queue.buffering.max.messages"] == 1234
    assert config["queue.buffering.max.kbytes"] == 4321
    assert config["partitioner"] == "murmur2_random"  # same key -> partition as Java clients


def test_producer_config_needs_a_bootstrap() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        producer_config(KafkaSettings(bootstrap=None))


async def test_resolve_ignores_futures_already_done() -> None:
    loop = asyncio.get_running_loop()
    ok, failed, gone = loop.create_future(), loop.create_future(), loop.create_future()
    gone.cancel()  # the caller timed out: a late report must not raise
    _resolve(ok, None)
    _resolve(failed, KafkaError(KafkaError._MSG_TIMED_OUT))
    _resolve(gone, None)
    assert ok.result() is None
    with pytest.raises(KafkaException):
        failed.result()


async def test_publish_before_start_is_unavailable() -> None:
    publisher = KafkaPublisher(KafkaSettings(bootstrap="127.0.0.1:9"))
    assert not publisher.healthy()
    with pytest.raises(Unavailable):
        await publisher.publish(b"k", b"v")
