"""The batch-id ledger in a running worker: memory bounded by the setting, retries still exact.

With room for 1,000 ids in memory, 2,400 client batches go through; the
retries of the oldest ones (long evicted) are found through the Bloom filter
and a ClickHouse look-up, by the worker that stored them and by a fresh
worker that only has the filter it loaded at its assignment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest
from clickhouse_connect.driver.client import Client

from heatmap.settings import ClickHouseSettings, KafkaSettings, Settings
from schemas.touch_batch import TouchBatch
from stream_workers.app import Worker
from tests.worker_support import (
    assert_exact,
    fleet_batches,
    inprocess_settings,
    metric,
    produce_batches,
    start_worker,
    wait_all_committed,
)


@pytest.fixture
def settings(kafka_settings: KafkaSettings, clickhouse: ClickHouseSettings) -> Settings:
    base = inprocess_settings(kafka_settings, clickhouse)
    return replace(
        base, worker=replace(base.worker, ledger_memory_entries=1_000, ledger_filter_mb=1)
    )


async def test_old_retries_are_counted_once_with_the_ledger_bounded(
    settings: Settings, client: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    batches = fleet_batches(2_400, 20)
    worker, registry = await start_worker(settings, client, started)
    await _produce(settings, batches)
    await wait_all_committed(settings, timeout_s=90)
    assert len(worker.processor.ledger) <= 1_000
    assert metric(registry, "heatmap_worker_duplicate_batches_total") == 0

    await _produce(settings, batches[:50])  # evicted from memory long ago
    await wait_all_committed(settings)
    assert metric(registry, "heatmap_worker_duplicate_batches_total") == 50
    assert len(worker.processor.ledger) <= 1_000
    assert_exact(client, batches)

    await worker.stop()
    started.remove(worker)
    fresh, registry2 = await start_worker(settings, client, started)
    await _produce(settings, batches[100:150] + batches[-5:])
    await wait_all_committed(settings)
    assert metric(registry2, "heatmap_worker_duplicate_batches_total") == 55
    assert len(fresh.processor.ledger) <= 1_000
    assert_exact(client, batches)


async def _produce(settings: Settings, batches: Sequence[TouchBatch]) -> None:
    k = settings.kafka
    assert k.bootstrap
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, batches)
