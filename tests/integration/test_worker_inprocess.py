"""The stream worker in the test process: real Kafka broker, the session's chDB store.

Exact counts with duplicates, poison and late events; a full replay under a
new consumer group changes nothing (the offset watermarks in ClickHouse);
ClickHouse failing mid-run: retries, nothing committed, nothing lost; a
chunk's three inserts in flight at once, each on its own connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import numpy as np
from clickhouse_connect.driver.client import Client

from heatmap.settings import Settings
from schemas.kafka.v1 import touch_batch_pb2
from schemas.touch_batch import encode_batch
from stream_workers.aggregator import Block
from stream_workers.app import Worker
from stream_workers.sink import CellStore
from tests.worker_support import (
    DelegatingStore,
    assert_exact,
    committed_offsets,
    fleet_batches,
    lag_reported,
    metric,
    produce,
    produce_batches,
    read_messages,
    shifted,
    start_worker,
    wait_all_committed,
)


def poison_messages() -> list[tuple[str, bytes]]:
    unknown_version = touch_batch_pb2.TouchBatch(
        format_version=2,
        user_id="u",
        screen_dict=["Home"],
        screen_index=[0],
        campaign_dict=[""],
        campaign_index=[0],
        x=[0.5],
        y=[0.5],
        timestamp_ms=[1],
        event_type=[1],  # type: ignore[list-item]
    ).SerializeToString()
    bad = fleet_batches(1, 10)[0]
    out_of_range = encode_batch(replace(bad, x=np.full(10, 1.5, np.float32)))
    return [("p1", b"\xff\xfe not protobuf"), ("p2", unknown_version), ("p3", out_of_range)]


async def test_exact_counts_with_duplicates_poison_late_events_and_a_full_replay(
    settings: Settings, client: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    batches = fleet_batches(60, 500)
    retries = batches[:4]  # same user and client batch id: counted once
    generated = [replace(b, client_batch_id=False) for b in fleet_batches(2, 100, client_ids=False)]
    late = [shifted(batches[10], 30 * 24, "late-1"), shifted(batches[11], 3, "late-2")]
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, batches)
    await asyncio.to_thread(produce, k.bootstrap, k.topic, poison_messages())
    await asyncio.to_thread(
        produce_batches, k.bootstrap, k.topic, retries + generated + generated + late
    )

    worker, registry = await start_worker(settings, client, started)
    await wait_all_committed(settings)
    assert worker.healthy()
    # generated ids are not deduplicated: the second copy is another request
    assert_exact(client, batches + generated + generated + late)
    late_hours = client.query(
        "SELECT DISTINCT toUnixTimestamp(hour) FROM touch_cells WHERE screen_name != '' "
        "AND hour < toDateTime({h:UInt32}, 'UTC')",
        parameters={"h": int(batches[0].timestamp_ms.min() // 1000 // 3600 * 3600)},
    ).result_rows
    assert late_hours, "late events were not stored in their own (earlier) hours"
    assert metric(registry, "heatmap_worker_dead_letters_total") == 3
    assert metric(registry, "heatmap_worker_duplicate_batches_total") == 4
    total = sum(len(b) for b in batches + generated + generated + late)
    assert metric(registry, "heatmap_worker_events_aggregated_total") == total
    assert metric(registry, "heatmap_worker_cells_flushed_total") > 0
    deadline = time.monotonic() + 10
    while metric(registry, "heatmap_worker_consumer_lag") != 0 or not lag_reported(registry):
        assert time.monotonic() < deadline, "consumer lag never reported as 0"
        await asyncio.sleep(0.5)
    dead = await asyncio.to_thread(read_messages, k.bootstrap, k.dlq_topic)
    assert len(dead) == 3
    sources = sorted(dict(m.headers())["heatmap-source"].decode() for m in dead)
    assert all(s.startswith(f"{k.topic}[") and "]@" in s for s in sources)
    await worker.stop()
    started.remove(worker)

    # A new group replays the whole topic: the watermarks drop every event already stored.
    replay = replace(settings, kafka=replace(k, consumer_group=k.consumer_group + "-replay"))
    _, registry2 = await start_worker(replay, client, started)
    await wait_all_committed(replay)
    assert_exact(client, batches + generated + generated + late)
    assert metric(registry2, "heatmap_worker_replayed_events_total") >= 3 * total
    assert metric(registry2, "heatmap_worker_cells_flushed_total") == 0


async def test_clickhouse_failing_retries_commits_nothing_and_recovers(
    settings: Settings, client: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    first, second = fleet_batches(40, 500), fleet_batches(40, 500, spec=None)[::-1]
    second = [replace(b, batch_id="w2-" + b.batch_id) for b in second]
    worker, registry = await start_worker(settings, client, started)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, first)
    await wait_all_committed(settings)
    before = await asyncio.to_thread(committed_offsets, k.bootstrap, k.consumer_group, k.topic, 3)

    # The middle table goes away: the by-user insert of a flush lands, touch_cells fails.
    client.command("DETACH TABLE touch_cells")
    try:
        await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, second)
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            now = await asyncio.to_thread(
                committed_offsets, k.bootstrap, k.consumer_group, k.topic, 3
            )
            assert now == before, "offsets committed while ClickHouse was failing"
            await asyncio.sleep(0.5)
        assert metric(registry, "heatmap_worker_clickhouse_failures_total") >= 2
        assert worker.healthy()  # still within the retry budget
    finally:
        client.command("ATTACH TABLE touch_cells")
    await wait_all_committed(settings)
    assert_exact(client, first + second)


class OverlapProbe(DelegatingStore):
    """Holds each cell insert until ``width`` of them are in flight (at most 10 s), then
    lets it reach the real store; ``most`` is the largest number seen in flight."""

    def __init__(self, inner: CellStore, width: int) -> None:
        super().__init__(inner)
        self.width = width
        self.in_flight = 0
        self.most = 0
        self._changed = threading.Condition()

    def insert_block(self, topic: str, block: Block, owner: str) -> None:
        with self._changed:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.in_flight >= self.width, timeout=10)
        try:
            self.inner.insert_block(topic, block, owner)
        finally:
            with self._changed:
                self.in_flight -= 1


async def test_a_chunks_three_inserts_run_side_by_side_and_counts_stay_exact(
    settings: Settings, client: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    assert settings.worker.insert_concurrency == 3  # the default
    batches = fleet_batches(30, 500)
    probes: list[OverlapProbe] = []

    def probe(store: CellStore) -> CellStore:
        probes.append(OverlapProbe(store, width=3))
        return probes[-1]

    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, batches)
    await start_worker(settings, client, started, wrap_store=probe)
    await wait_all_committed(settings)
    assert probes[0].most == 3, "a chunk's inserts (one per table) did not overlap"
    assert_exact(client, batches)


async def test_two_workers_share_one_store_across_rebalances(
    settings: Settings, client: Client, started: list[Worker]
) -> None:
    """Two Faust apps in this process, one consumer group, ONE ClickHouse store.

    In one process both workers can share the chDB store, which is the
    production layout (a ClickHouse server). The first worker holds a batch
    in its ``noack_take`` buffer (5 s flush interval) when the second joins:
    the revoke must flush it. Client retries of batches the first worker
    counted reach whichever worker owns the partition later: counted once
    through the shared ledger.
    """
    k = settings.kafka
    assert k.bootstrap
    slow = replace(
        settings, worker=replace(settings.worker, flush_interval_s=5.0, flush_max_cells=200_000)
    )
    first, second = fleet_batches(60, 500), fleet_batches(60, 500, spec=None)
    second = [replace(b, batch_id="w2-" + b.batch_id) for b in second]
    retries = first[:10]

    w1, _ = await start_worker(slow, client, started)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, first)
    await asyncio.sleep(1.0)  # fetched and buffered, flushed only by the 5 s timer or a revoke
    assert not w1.processor.flushed_offsets
    w2, _ = await start_worker(slow, client, started)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, second + retries)
    await wait_all_committed(settings, timeout_s=90)
    assert w1.processor.flushed_offsets
    assert w2.processor.flushed_offsets
    await w1.stop()  # leaves the group: w2 takes every partition
    started.remove(w1)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, retries)
    await wait_all_committed(settings, timeout_s=90)
    assert_exact(client, first + second)
