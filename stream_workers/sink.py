"""Where flushes go: the ``CellStore`` seam and its ClickHouse implementation.

All methods are synchronous (clickhouse-connect's sync client; the async
client does not take ``chdb://``); the processor calls them through
``asyncio.to_thread`` and owns retries. Every statement here is identical for
chDB and a ClickHouse server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from clickhouse_connect.driver.client import Client

from stream_workers.aggregator import TABLE_NAMES, Block, marker_campaign
from stream_workers.native import NumberColumn, StringColumn, encode_block

logger = logging.getLogger(__name__)

LEDGER_TABLE = "ingest_batches"
LEDGER_DAYS = 7
# One insert must stay one block on the server (atomic rows + markers).
MAX_BLOCK_ROWS = 1_000_000
# Rows of a block are already unique per key (aggregated by the worker): merging
# them again on insert is wasted work. Nothing here splits or reorders the block.
INSERT_SETTINGS = {"optimize_on_insert": 0}


@dataclass(frozen=True)
class LedgerRow:
    partition: int
    user_id: str
    batch_id: str
    offset: int
    received_at_ms: int


class CellStore(Protocol):
    def load_watermarks(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[tuple[str, int, int], int]: ...

    def load_ledger(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[int, dict[tuple[str, str], int]]: ...

    def insert_ledger(self, topic: str, rows: Sequence[LedgerRow]) -> None: ...

    def insert_block(self, block: Block) -> None: ...

    def block_landed(self, topic: str, block: Block) -> bool: ...


class ClickHouseCellStore:
    """``CellStore`` over a clickhouse-connect client bound to the heatmap database."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def load_watermarks(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[tuple[str, int, int], int]:
        if not partitions:
            return {}
        names = {marker_campaign(topic, p): p for p in partitions}
        found: dict[tuple[str, int, int], int] = {}
        for table in TABLE_NAMES:
            result = self._client.query(
                f"SELECT campaign_id, toYYYYMM(hour), max(source_offset) FROM {table} "
                "WHERE screen_name = '' AND campaign_id IN {names:Array(String)} "
                "GROUP BY campaign_id, toYYYYMM(hour)",
                parameters={"names": list(names)},
            )
            for campaign, month, offset in result.result_rows:
                found[(table, names[str(campaign)], int(month))] = int(offset)
        return found

    def load_ledger(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[int, dict[tuple[str, str], int]]:
        ledger: dict[int, dict[tuple[str, str], int]] = {p: {} for p in partitions}
        if not partitions:
            return ledger
        result = self._client.query(
            f"SELECT kafka_partition, user_id, batch_id, min(kafka_offset) FROM {LEDGER_TABLE} "
            "WHERE topic = {topic:String} AND kafka_partition IN {partitions:Array(UInt32)} "
            f"AND received_at >= now() - INTERVAL {LEDGER_DAYS} DAY "
            "GROUP BY kafka_partition, user_id, batch_id",
            parameters={"topic": topic, "partitions": list(partitions)},
        )
        for partition, user_id, batch_id, offset in result.result_rows:
            ledger[int(partition)][(str(user_id), str(batch_id))] = int(offset)
        return ledger

    def insert_ledger(self, topic: str, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        n = len(rows)
        users = list(dict.fromkeys(r.user_id for r in rows))
        batches = list(dict.fromkeys(r.batch_id for r in rows))
        user_code = {u: i for i, u in enumerate(users)}
        batch_code = {b: i for i, b in enumerate(batches)}
        payload = encode_block(
            [
                ("topic", "String", StringColumn([topic], np.zeros(n, np.int64))),
                (
                    "kafka_partition",
                    "UInt32",
                    NumberColumn(np.array([r.partition for r in rows], np.uint32)),
                ),
                (
                    "user_id",
                    "String",
                    StringColumn(users, np.array([user_code[r.user_id] for r in rows])),
                ),
                (
                    "batch_id",
                    "String",
                    StringColumn(batches, np.array([batch_code[r.batch_id] for r in rows])),
                ),
                (
                    "kafka_offset",
                    "Int64",
                    NumberColumn(np.array([r.offset for r in rows], np.int64)),
                ),
                (
                    "received_at",
                    "UInt32",
                    NumberColumn(
                        np.array([max(r.received_at_ms, 0) // 1000 for r in rows], np.uint32)
                    ),
                ),
            ],
            n,
        )
        self._client.raw_insert(
            LEDGER_TABLE,
            ["topic", "kafka_partition", "user_id", "batch_id", "kafka_offset", "received_at"],
            payload,
            fmt="Native",
        )

    def insert_block(self, block: Block) -> None:
        if block.rows + len(block.markers) >= MAX_BLOCK_ROWS:
            raise ValueError(f"block of {block.rows} rows would not be one insert block")
        self._client.raw_insert(
            block.table,
            list(block.column_names),
            block.payload,
            fmt="Native",
            settings=INSERT_SETTINGS,
        )

    def block_landed(self, topic: str, block: Block) -> bool:
        """After a failed insert: did it land anyway (e.g. a timeout after the server committed)?

        Rows and markers land together or not at all, so the markers answer it.
        """
        if not block.markers:
            return False
        names = {marker_campaign(topic, p): offset for p, offset in block.markers.items()}
        result = self._client.query(
            f"SELECT campaign_id, max(source_offset) FROM {block.table} "
            "WHERE screen_name = '' AND campaign_id IN {names:Array(String)} "
            "AND toYYYYMM(hour) = {month:UInt32} GROUP BY campaign_id",
            parameters={"names": list(names), "month": block.month},
        )
        stored: Mapping[str, int] = {str(c): int(o) for c, o in result.result_rows}
        return all(stored.get(name, -1) >= offset for name, offset in names.items())
