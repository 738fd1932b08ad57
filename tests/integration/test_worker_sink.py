"""``ClickHouseCellStore`` against the real engine (chDB here): blocks, markers, ledger, fences."""

from __future__ import annotations

import threading
import time

from clickhouse_connect.driver.client import Client

from heatmap.clickhouse import connect
from heatmap.settings import ClickHouseSettings
from stream_workers.aggregator import TABLE_NAMES, Record, aggregate
from stream_workers.dedup import BatchLedger
from stream_workers.sink import FENCE_COMMENT, ClickHouseCellStore, LedgerRow, fence_tag
from tests.worker_support import fleet_batches, fleet_month


def test_one_insert_is_one_part_with_its_markers(client: Client) -> None:
    store = ClickHouseCellStore(client)
    store.claim("topic", [0, 1, 2], "me")
    records = [Record(i % 3, 1000 + i, b) for i, b in enumerate(fleet_batches(1000, 500))]
    blocks = aggregate(records, "topic", {})
    month = fleet_month()
    assert {b.month for b in blocks} == {month}
    by_user = next(b for b in blocks if b.table == "touch_cells_by_user")
    assert by_user.rows > 490_000  # as large as a default (and the largest) flush chunk
    for block in blocks:
        store.insert_block("topic", block, "me")
        assert store.block_landed("topic", block)
    for block in blocks:
        parts = client.query(
            "SELECT count(), sum(rows) FROM system.parts WHERE database = currentDatabase() "
            "AND table = {t:String} AND active",
            parameters={"t": block.table},
        ).result_rows
        assert parts == [(1, block.rows + 3)], block.table
    marks = store.load_watermarks("topic", [0, 1, 2, 3])
    highest = {0: 1999, 1: 1997, 2: 1998}  # offsets 1000 + i on partition i % 3, i < 1000
    assert marks == {(t, p, month): highest[p] for t in TABLE_NAMES for p in range(3)}
    assert store.load_watermarks("other-topic", [0]) == {}


def test_block_not_landed_until_inserted(client: Client) -> None:
    store = ClickHouseCellStore(client)
    records = [Record(0, 7, b) for b in fleet_batches(1, 50)]
    block = aggregate(records, "topic", {})[0]
    assert not store.block_landed("topic", block)
    store.claim("topic", [0], "me")
    store.insert_block("topic", block, "me")
    assert store.block_landed("topic", block)


def test_ledger_look_up_returns_the_first_offset_in_the_window(client: Client) -> None:
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
    keys = [(0, "u1", "b1"), (0, "u1", "b2"), (1, "u1", "b1"), (2, "u1", "b1"), (0, "old", "b9")]
    assert store.look_up_ledger("topic", keys) == {
        (0, "u1", "b1"): 10,
        (0, "u1", "b2"): 11,
        (1, "u1", "b1"): 3,
    }
    assert store.look_up_ledger("other", keys) == {}


def test_ledger_filter_from_clickhouse_matches_the_worker_hash(client: Client) -> None:
    """ClickHouse computes the filter words of the stored keys; Python finds every one of them."""
    store = ClickHouseCellStore(client)
    now = int(time.time() * 1000)
    rows = [LedgerRow(i % 3, f"user-{i}", f"batch-{i}", i, now) for i in range(5_000)]
    store.insert_ledger("topic", rows)
    store.insert_ledger("topic", [LedgerRow(0, "old", "b9", 1, now - 8 * 86_400_000)])
    ledger = BatchLedger(capacity=1_000, filter_bytes=1 << 16)
    positions = store.load_ledger_filter("topic", [0, 1], ledger.filter)
    assert positions == 4 * sum(1 for r in rows if r.partition in (0, 1))  # 4 probes per id
    stored = [(r.partition, r.user_id, r.batch_id) for r in rows]
    in_loaded = [k for k in stored if k[0] in (0, 1)]
    assert ledger.to_look_up(in_loaded) == in_loaded  # every stored key is a filter hit
    never = [(0, f"user-{i}", f"new-{i}") for i in range(5_000)]
    hits = ledger.to_look_up([*never, (2, "user-2", "batch-2"), (0, "old", "b9")])
    assert len(hits) < 250  # false positives only (about 1 % at this load)
    assert store.look_up_ledger("topic", hits) == {}


def test_a_fenced_insert_lands_nothing(client: Client) -> None:
    store = ClickHouseCellStore(client)
    block = aggregate([Record(1, 7, b) for b in fleet_batches(1, 50)], "topic", {})[0]
    store.claim("topic", [0, 1], "old-owner")
    store.claim("topic", [1], "new-owner")
    assert store.owners("topic", [0, 1, 2]) == {0: "old-owner", 1: "new-owner"}
    store.insert_block("topic", block, "old-owner")
    assert not store.block_landed("topic", block)
    assert store.load_watermarks("topic", [1]) == {}
    store.insert_block("topic", block, "new-owner")
    assert store.block_landed("topic", block)
    store.claim("topic", [1], "old-owner")  # a later claim by the same worker wins again
    assert store.owners("topic", [1]) == {1: "old-owner"}


def test_claim_waits_for_an_older_insert_already_running(clickhouse: ClickHouseSettings) -> None:
    """An insert whose condition the server already evaluated still lands: claim waits it out.

    A second client runs a slow insert tagged like a fenced insert of
    partition 0 (the server sleeps per row, as if the block were still
    uploading); the claim issued meanwhile returns only after it committed,
    so the watermark read right after sees its marker.
    """
    slow_client, client = connect(clickhouse), connect(clickhouse)
    try:
        store = ClickHouseCellStore(client)
        store.claim("topic", [0], "old-owner")
        marker = "topic#0"
        slow = (
            f"INSERT /* {FENCE_COMMENT} {fence_tag('topic', 0)} */ INTO touch_cells "
            "(screen_name, campaign_id, event_type, hour, cell_x, cell_y, events, source_offset) "
            f"SELECT '', '{marker}', 0, toDateTime('2026-11-01 00:00:00', 'UTC'), 0, 0, 0, 41 "
            "FROM numbers(20) WHERE sleepEachRow(0.1) = 0"
        )
        thread = threading.Thread(target=slow_client.command, args=(slow,))
        thread.start()
        time.sleep(0.4)
        started = time.monotonic()
        store.claim("topic", [0], "new-owner")
        waited = time.monotonic() - started
        assert store.load_watermarks("topic", [0])[("touch_cells", 0, 202611)] == 41
        thread.join()
        assert waited > 0.8, waited
    finally:
        slow_client.close()
        client.close()
