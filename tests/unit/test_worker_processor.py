"""``Processor`` orchestration without I/O: ordering, retries, ambiguous failures, dedup.

The store here is an in-memory ``CellStore`` that can fail on purpose, which
the real engines cannot do on demand (e.g. an INSERT that commits but whose
response is lost). The real ClickHouse path is covered by the integration
tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from schemas.touch_batch import TouchBatch, encode_batch
from stream_workers.aggregator import TABLE_NAMES, Block
from stream_workers.dedup import BloomFilter, Key, key_hash, probe_positions
from stream_workers.metrics import WorkerMetrics
from stream_workers.processor import Fenced, FlushAbandoned, Processor, RawRecord
from stream_workers.sink import LedgerRow
from tests.worker_support import fleet_batches


class MemoryStore:
    """Rows, markers, ledger and claims in memory, with the fencing rule of the real store."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.ledger: list[tuple[str, LedgerRow]] = []
        self.claims: dict[int, str] = {}
        self.fail_next = 0  # raise before storing
        self.lose_reply_next = 0  # store, then raise (the reply was lost)
        self.calls: list[str] = []
        self.fenced_inserts = 0

    def claim(self, topic: str, partitions: Sequence[int], owner: str) -> None:
        self.claims.update(dict.fromkeys(partitions, owner))

    def owners(self, topic: str, partitions: Sequence[int]) -> dict[int, str]:
        return {p: self.claims[p] for p in partitions if p in self.claims}

    def load_watermarks(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[tuple[str, int, int], int]:
        marks: dict[tuple[str, int, int], int] = {}
        for b in self.blocks:
            for p, o in b.markers.items():
                if p in partitions:
                    key = (b.table, p, b.month)
                    marks[key] = max(marks.get(key, -1), o)
        return marks

    def load_ledger_filter(self, topic: str, partitions: Sequence[int], into: BloomFilter) -> int:
        positions = [
            pos
            for t, r in self.ledger
            if t == topic and r.partition in partitions
            for pos in probe_positions(key_hash((r.partition, r.user_id, r.batch_id)), into.bits)
        ]
        into.add_positions(np.array(positions, dtype=np.uint64))
        return len(positions)

    def look_up_ledger(self, topic: str, keys: Sequence[Key]) -> dict[Key, int]:
        self.calls.append("look-up")
        wanted = set(keys)
        found: dict[Key, int] = {}
        for t, r in self.ledger:
            key = (r.partition, r.user_id, r.batch_id)
            if t == topic and key in wanted:
                found[key] = min(found.get(key, r.offset), r.offset)
        return found

    def insert_ledger(self, topic: str, rows: Sequence[LedgerRow]) -> None:
        self.calls.append("ledger")
        self.ledger += [(topic, r) for r in rows]

    def insert_block(self, topic: str, block: Block, owner: str) -> None:
        self.calls.append(block.table)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("ClickHouse unavailable")
        if any(self.claims.get(p) != owner for p in block.markers):
            self.fenced_inserts += 1  # the server's WHERE is false: nothing inserted
            return
        self.blocks.append(block)
        if self.lose_reply_next:
            self.lose_reply_next -= 1
            raise TimeoutError("reply lost after the insert committed")

    def block_landed(self, topic: str, block: Block) -> bool:
        self.calls.append("landed?")
        return block in self.blocks

    def events(self, table: str) -> int:
        return sum(b.events for b in self.blocks if b.table == table)


def processor(store: MemoryStore, **kwargs: object) -> tuple[Processor, list[RawRecord]]:
    dead: list[RawRecord] = []

    async def dead_letter(record: RawRecord, reason: str) -> None:
        dead.append(record)

    p = Processor(
        store,
        "t",
        WorkerMetrics(CollectorRegistry()),
        dead_letter,
        retry_max_s=0.01,
        **kwargs,  # type: ignore[arg-type]
    )
    return p, dead


def renamed(batches: Sequence[TouchBatch], prefix: str) -> list[TouchBatch]:
    return [replace(b, batch_id=prefix + b.batch_id) for b in batches]


def raw(batches: Sequence[object], start: int = 0, partition: int = 0) -> list[RawRecord]:
    return [
        RawRecord(partition, start + i, encode_batch(b))  # type: ignore[arg-type]
        for i, b in enumerate(batches)
    ]


async def test_chunks_ledger_first_then_one_insert_per_table() -> None:
    store = MemoryStore()
    p, _ = processor(store, chunk_events=1000)
    batches = fleet_batches(6, 500)
    await p.process(raw(batches))
    # 3 chunks of 2 batches: ledger rows, then the three tables, chunk after chunk
    assert store.calls == ["ledger", *TABLE_NAMES] * 3
    assert all(store.events(t) == 3000 for t in TABLE_NAMES)
    assert p.flushed_offsets == {0: 5}
    assert [b.markers for b in store.blocks[:3]] == [{0: 1}] * 3


async def test_cells_flushed_and_watermarks_count_every_block_of_a_chunk() -> None:
    # Was: only the last block of a chunk (touch_cells_64) was counted and marked.
    store = MemoryStore()
    registry = CollectorRegistry()
    p, _ = processor(store)
    p.metrics = WorkerMetrics(registry)
    await p.process(raw(fleet_batches(4, 500)))
    flushed = {
        s.labels["table"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "heatmap_worker_cells_flushed_total"
    }
    assert flushed == {t: sum(b.rows for b in store.blocks if b.table == t) for t in TABLE_NAMES}
    assert all(flushed[t] > 0 for t in TABLE_NAMES)
    assert {(t, 0) for t, _, _ in p.watermarks} == {(t, 0) for t in TABLE_NAMES}


async def test_failed_inserts_are_retried_and_a_lost_reply_is_not_inserted_twice() -> None:
    store = MemoryStore()
    p, _ = processor(store)
    store.fail_next, store.lose_reply_next = 2, 0
    await p.process(raw(fleet_batches(2, 100)))
    assert all(store.events(t) == 200 for t in TABLE_NAMES)
    assert p.failing_since is None
    store.lose_reply_next = 1
    more = [replace(b, batch_id="more-" + b.batch_id) for b in fleet_batches(2, 100)]
    await p.process(raw(more, start=2))
    assert all(store.events(t) == 400 for t in TABLE_NAMES)
    assert "landed?" in store.calls
    assert p.metrics.clickhouse_failures._value.get() == 3


async def test_stopping_while_clickhouse_fails_abandons_without_flushing() -> None:
    store = MemoryStore()
    p, _ = processor(store)
    store.fail_next = 10**9
    task = asyncio.create_task(p.process(raw(fleet_batches(1, 10))))
    # Wait until the flush is failing (not a fixed sleep: on a loaded machine
    # the first attempt can take longer than any fixed wait).
    for _ in range(1000):
        if p.failing_for() > 0:
            break
        await asyncio.sleep(0.01)
    assert p.failing_for() > 0
    p.stop()
    with pytest.raises(FlushAbandoned):
        await task
    assert p.flushed_offsets == {}


async def test_replay_after_a_crash_is_dropped_by_watermarks_and_ledger() -> None:
    store = MemoryStore()
    batches = fleet_batches(4, 100)
    first, _ = processor(store)
    await first.process(raw(batches))
    # a new process (state loaded from the store) replays everything, plus a client retry
    again, _ = processor(store)
    await again.process([*raw(batches), *raw([batches[1]], start=4)])  # + a client retry
    assert all(store.events(t) == 400 for t in TABLE_NAMES)
    assert again.metrics.duplicate_batches._value.get() == 1
    assert len(store.ledger) == 4  # the replay recorded nothing new


async def test_crash_between_ledger_and_cells_still_counts_the_batch() -> None:
    store = MemoryStore()
    batches = fleet_batches(2, 100)
    store.ledger = [
        ("t", LedgerRow(0, b.user_id, b.batch_id, i, b.received_at_ms))
        for i, b in enumerate(batches)
    ]
    p, _ = processor(store)
    await p.process(raw(batches))
    assert all(store.events(t) == 200 for t in TABLE_NAMES)


async def test_poison_is_dead_lettered_and_its_offset_moves_on() -> None:
    store = MemoryStore()
    p, dead = processor(store)
    good = raw(fleet_batches(1, 10))
    await p.process([RawRecord(0, 0, b"\x00garbage"), RawRecord(0, 1, None)])
    assert p.flushed_offsets == {0: 1}
    await p.process([replace(good[0], offset=2)])
    assert [d.offset for d in dead] == [0, 1]
    assert p.flushed_offsets == {0: 2}
    assert {b.markers[0] for b in store.blocks} == {2}


async def test_a_flush_of_a_writer_that_lost_its_partition_lands_nothing_and_raises() -> None:
    store = MemoryStore()
    p, _ = processor(store)
    await p.process(raw(fleet_batches(2, 100)))
    store.claim("t", [0], "another worker")  # the group moved partition 0 meanwhile
    more = [replace(b, batch_id="more-" + b.batch_id) for b in fleet_batches(2, 100)]
    with pytest.raises(Fenced):
        await p.process(raw(more, start=2))
    assert all(store.events(t) == 200 for t in TABLE_NAMES)
    assert store.fenced_inserts == 3
    assert p.flushed_offsets == {0: 1}
    assert p.metrics.fenced_flushes._value.get() == 1


async def test_ownership_is_checked_before_every_retry() -> None:
    """ClickHouse failing past the rebalance: the retry loop stops once the partition moved."""
    store = MemoryStore()
    p, _ = processor(store)
    await p.process(raw(fleet_batches(1, 10)))
    store.fail_next = 10**9
    task = asyncio.create_task(p.process(raw(renamed(fleet_batches(1, 10), "r-"), start=1)))
    await asyncio.sleep(0.05)
    assert not task.done()  # retrying: still the owner
    store.claim("t", [0], "another worker")
    with pytest.raises(Fenced):
        await asyncio.wait_for(task, 5)


async def test_a_batch_prepared_before_a_rebalance_keeps_the_old_owner() -> None:
    """Even regaining the partition later does not let a stale flush land."""
    store = MemoryStore()
    p, _ = processor(store)
    await p.process(raw(fleet_batches(1, 10)))
    prepared = await p.prepare(raw(renamed(fleet_batches(1, 10), "stale-"), start=1))
    p.reset()  # rebalance; the same worker gets partition 0 again and claims it anew
    await p.process(raw(renamed(fleet_batches(1, 10), "new-"), start=5))
    with pytest.raises(Fenced):
        await p.store(prepared)
    assert all(store.events(t) == 20 for t in TABLE_NAMES)


async def test_an_evicted_client_batch_id_is_looked_up_in_the_store() -> None:
    store = MemoryStore()
    p, _ = processor(store, ledger_entries=1_000)
    batches = fleet_batches(1_500, 2)
    await p.process(raw(batches))
    assert len(p.ledger) <= 1_000
    assert "look-up" not in store.calls  # new ids: no filter hit, no look-up
    await p.process(raw(batches[:3], start=1_500))  # retries of evicted ids
    assert "look-up" in store.calls
    assert p.metrics.duplicate_batches._value.get() == 3
    assert all(store.events(t) == 3_000 for t in TABLE_NAMES)
