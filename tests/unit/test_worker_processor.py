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

import pytest
from prometheus_client import CollectorRegistry

from schemas.touch_batch import encode_batch
from stream_workers.aggregator import TABLE_NAMES, Block
from stream_workers.metrics import WorkerMetrics
from stream_workers.processor import FlushAbandoned, Processor, RawRecord
from stream_workers.sink import LedgerRow
from tests.worker_support import fleet_batches


class MemoryStore:
    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.ledger: list[tuple[str, LedgerRow]] = []
        self.fail_next = 0  # raise before storing
        self.lose_reply_next = 0  # store, then raise (the reply was lost)
        self.calls: list[str] = []

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

    def load_ledger(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[int, dict[tuple[str, str], int]]:
        out: dict[int, dict[tuple[str, str], int]] = {p: {} for p in partitions}
        for t, r in self.ledger:
            if t == topic and r.partition in out:
                key = (r.user_id, r.batch_id)
                out[r.partition][key] = min(out[r.partition].get(key, r.offset), r.offset)
        return out

    def insert_ledger(self, topic: str, rows: Sequence[LedgerRow]) -> None:
        self.calls.append("ledger")
        self.ledger += [(topic, r) for r in rows]

    def insert_block(self, block: Block) -> None:
        self.calls.append(block.table)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("ClickHouse unavailable")
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
    await asyncio.sleep(0.05)
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
