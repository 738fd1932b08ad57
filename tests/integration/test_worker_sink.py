"""``ClickHouseCellStore`` against the real engine (chDB here): blocks, markers, ledger."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from clickhouse_connect.driver.client import Client

from heatmap.clickhouse import connect
from heatmap.settings import ClickHouseSettings
from stream_workers.aggregator import TABLE_NAMES, Record, aggregate
from stream_workers.sink import ClickHouseCellStore, LedgerRow
from tests.worker_support import fleet_batches


@pytest.fixture
def client(clickhouse: ClickHouseSettings) -> Iterator[Client]:
    c = connect(clickhouse)
    yield c
    c.close()


def test_one_insert_is_one_part_with_its_markers(client: Client) -> None:
    store = ClickHouseCellStore(client)
    records = [Record(i % 3, 1000 + i, b) for i, b in enumerate(fleet_batches(500, 500))]
    blocks = aggregate(records, "topic", {})
    assert {b.month for b in blocks} == {202611}
    by_user = next(b for b in blocks if b.table == "touch_cells_by_user")
    assert by_user.rows > 240_000  # a large block, as a default flush is
    for block in blocks:
        store.insert_block(block)
        assert store.block_landed("topic", block)
    for block in blocks:
        parts = client.query(
            "SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() "
            "AND table = {t:String} AND active",
            parameters={"t": block.table},
        ).result_rows
        assert parts == [(1, block.rows + 3)], block.table
    marks = store.load_watermarks("topic", [0, 1, 2, 3])
    highest = {0: 1498, 1: 1499, 2: 1497}  # offsets 1000 + i on partition i % 3, i < 500
    assert marks == {(t, p, 202611): highest[p] for t in TABLE_NAMES for p in range(3)}
    assert store.load_watermarks("other-topic", [0]) == {}


def test_block_not_landed_until_inserted(client: Client) -> None:
    store = ClickHouseCellStore(client)
    records = [Record(0, 7, b) for b in fleet_batches(1, 50)]
    block = aggregate(records, "topic", {})[0]
    assert not store.block_landed("topic", block)
    store.insert_block(block)
    assert store.block_landed("topic", block)


def test_ledger_keeps_the_first_offset_per_partition(client: Client) -> None:
    store = ClickHouseCellStore(client)
    now = int(time.time() * 1000)
    store.insert_ledger(
        "topic",
        [
            LedgerRow(0, "u1", "b1", 10, now),
            LedgerRow(0, "u1", "b2", 11, now),
            LedgerRow(1, "u1", "b1", 3, now),
            LedgerRow(0, "old", "b9", 1, now - 8 * 86_400_000),  # past the 7-day window
        ],
    )
    store.insert_ledger("topic", [LedgerRow(0, "u1", "b1", 10, now)])  # a replayed insert
    assert store.load_ledger("topic", [0, 1, 2]) == {
        0: {("u1", "b1"): 10, ("u1", "b2"): 11},
        1: {("u1", "b1"): 3},
        2: {},
    }
    assert store.load_ledger("other", [0]) == {0: {}}
