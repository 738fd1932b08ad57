"""A writer stalled past the rebalance timeout cannot land its flush: exact counts.

Two workers (two Faust apps in this process, one consumer group) share ONE
chDB store, the production layout. The first one's insert path is held (the
``StallingStore`` seam: a GC pause, a SIGSTOP, a network stall between the
worker deciding to insert and the insert reaching ClickHouse) while its batch
is in flight. The second worker joins; the first cannot finish its revoke,
misses the rebalance timeout and loses every partition; the second claims
them, replays the un-acked records and stores them. Only then is the first
one's insert let go: without fencing it lands a second copy of that flush.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from clickhouse_connect.driver.client import Client

from heatmap.settings import Settings
from stream_workers.app import Worker
from stream_workers.sink import CellStore
from tests.worker_support import (
    StallingStore,
    assert_exact,
    fleet_batches,
    metric,
    produce_batches,
    start_worker,
    wait_all_committed,
)


async def wait_until(what: str, check: object, timeout_s: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_writer_stalled_past_the_rebalance_lands_nothing(
    settings: Settings, client: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    first = fleet_batches(30, 500)
    second = [replace(b, batch_id="w2-" + b.batch_id) for b in fleet_batches(30, 500)]
    third = [replace(b, batch_id="w3-" + b.batch_id) for b in fleet_batches(20, 500)]
    retries = first[:5] + second[:5]  # client retries: counted once, whoever stores them
    stalls: list[StallingStore] = []

    def stalling(store: CellStore) -> CellStore:
        stalls.append(StallingStore(store))
        return stalls[-1]

    a, registry_a = await start_worker(settings, client, started, wrap_store=stalling)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, first)
    await wait_all_committed(settings)
    assert_exact(client, first)

    stall = stalls[0]
    stall.armed.set()
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, second)
    assert await asyncio.to_thread(stall.stalled.wait, 30), "the insert never reached the seam"

    # B joins: A cannot finish its revoke (its flush is held), misses the
    # rebalance timeout and is dropped from the group; B claims everything.
    b, _ = await start_worker(settings, client, started)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, retries)
    await wait_all_committed(settings, timeout_s=120)
    assert sorted(b.processor.flushed_offsets) == [0, 1, 2]
    assert_exact(client, first + second)

    # A resumes: its insert reaches ClickHouse after B stored the same records.
    stall.release.set()
    await wait_until("A to stop on the fence", a.crashed, 30)
    assert metric(registry_a, "heatmap_worker_fenced_flushes_total") >= 1
    assert not a.healthy()
    assert_exact(client, first + second)

    # B goes on alone, exactly.
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, third + retries)
    await wait_all_committed(settings, timeout_s=60)
    assert_exact(client, first + second + third)
    assert b.healthy()
