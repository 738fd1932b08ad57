"""Where flushes go: the ``CellStore`` seam and its ClickHouse implementation.

All methods are synchronous (clickhouse-connect's sync client; the async
client does not take ``chdb://``); the processor calls them through
``asyncio.to_thread`` and owns retries. Every statement is the same for chDB
and a ClickHouse server, except where a fenced insert reads its block from
(a file for chDB, the request body for a server).

Fencing (docs/exactly-once.md, "Fencing"): a worker ``claim``s a partition
before it reads the partition's watermarks, and every cell insert is an
``INSERT ... SELECT`` whose WHERE clause, evaluated by the server, requires
that the inserting worker still holds the latest claim of every source
partition of the block.
"""

from __future__ import annotations

import logging
import queue
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from clickhouse_connect.driver.client import Client

from stream_workers.aggregator import TABLE_NAMES, Block, marker_campaign
from stream_workers.dedup import FILTER_HASH_SQL, BloomFilter, Key, probe_positions_sql
from stream_workers.native import NumberColumn, StringColumn, encode_block
from stream_workers.suppression import SuppressionRow

logger = logging.getLogger(__name__)

LEDGER_TABLE = "ingest_batches"
LEDGER_DAYS = 7
FENCE_TABLE = "worker_fences"
FENCE_COMMENT = "heatmap fenced insert"
SUPPRESSION_TABLE = "user_suppressions"
CUT_TABLE = "suppression_cuts"
# One insert must stay one block on the server (atomic rows + markers).
MAX_BLOCK_ROWS = 1_000_000
# Rows of a block are already unique per key (aggregated by the worker): merging
# them again on insert is wasted work. Nothing here splits or reorders the block.
INSERT_SETTINGS = {"optimize_on_insert": 0}
# Filter positions per streamed block when loading the ledger filter (2 MiB).
FILTER_BLOCK_ROWS = 262_144


@dataclass(frozen=True)
class LedgerRow:
    partition: int
    user_id: str
    batch_id: str
    offset: int
    received_at_ms: int


class CellStore(Protocol):
    def claim(self, topic: str, partitions: Sequence[int], owner: str) -> None: ...

    def owners(self, topic: str, partitions: Sequence[int]) -> dict[int, str]: ...

    def load_watermarks(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[tuple[str, int, int], int]: ...

    def load_ledger_filter(
        self, topic: str, partitions: Sequence[int], into: BloomFilter
    ) -> int: ...

    def look_up_ledger(self, topic: str, keys: Sequence[Key]) -> dict[Key, int]: ...

    def insert_ledger(self, topic: str, rows: Sequence[LedgerRow]) -> None: ...

    def insert_block(self, topic: str, block: Block, owner: str) -> None: ...

    def block_landed(self, topic: str, block: Block) -> bool: ...


class SuppressionStore(Protocol):
    """The suppression list and its cuts (docs/privacy.md, "Erasure protocol")."""

    def suppression_version(self) -> int: ...

    def load_suppressions(self, after: int) -> list[SuppressionRow]: ...

    def load_cuts(self, topic: str, partitions: Sequence[int]) -> dict[tuple[int, int], int]: ...

    def write_cuts(self, topic: str, cuts: Mapping[tuple[int, int], int], owner: str) -> None: ...


def fence_tag(topic: str, partition: int) -> str:
    """Names a partition in the text of a fenced insert, so that ``claim`` can see it running."""
    return f"[fence {marker_campaign(topic, partition)}]"


# The current owner of each partition: the claim with the highest epoch (ties
# broken by the owner token, so that every reader picks the same one).
_OWNERS_SQL = (
    f"SELECT kafka_partition, argMax(owner, (epoch, owner)) AS o FROM {FENCE_TABLE} "
    "WHERE topic = {topic:String} AND kafka_partition IN {partitions:Array(UInt32)} "
    "GROUP BY kafka_partition"
)


class ClickHouseCellStore:
    """``CellStore`` over a clickhouse-connect client bound to the heatmap database.

    ``embedded``: the client is chDB (a fenced insert reads its block from a
    temporary file; a server reads it from the request body with ``input()``).
    ``insert_clients``: the connections cell inserts take turns on, one insert
    at a time each (default: ``client``). One client runs one call at a time,
    so inserts from several threads run side by side only on several clients;
    callers keep at most that many in flight (``Processor``), so none waits
    for a client here.
    """

    def __init__(
        self,
        client: Client,
        *,
        embedded: bool | None = None,
        inflight_timeout_s: float = 600.0,
        insert_clients: Sequence[Client] = (),
    ) -> None:
        self._client = client
        self._insert_clients: queue.SimpleQueue[Client] = queue.SimpleQueue()
        for insert_client in insert_clients or (client,):
            self._insert_clients.put(insert_client)
        self._embedded = type(client).__name__ == "ChdbClient" if embedded is None else embedded
        self._inflight_timeout_s = inflight_timeout_s

    # ---------------------------------------------------------------- fencing

    def claim(self, topic: str, partitions: Sequence[int], owner: str) -> None:
        """Make ``owner`` the only writer of ``partitions``; return once no older one can land.

        The claim row (a higher epoch) makes every fenced insert of an older
        owner that STARTS from now on insert nothing: the server evaluates its
        condition. An older insert that started before (condition evaluated,
        block maybe still uploading) is in ``system.processes``, so this waits
        until none is left. After that, whatever an older owner wrote is
        visible to the watermark read that follows, and nothing more can land.
        """
        if not partitions:
            return
        self._client.command(
            f"INSERT INTO {FENCE_TABLE} (topic, kafka_partition, owner, epoch) "
            "SELECT {topic:String}, arrayJoin({partitions:Array(UInt32)}), {owner:String}, "
            f"(SELECT max(epoch) FROM {FENCE_TABLE} WHERE topic = {{topic:String}}) + 1",
            parameters={"topic": topic, "partitions": list(partitions), "owner": owner},
        )
        tags = [fence_tag(topic, p) for p in partitions]
        deadline = time.monotonic() + self._inflight_timeout_s
        while True:
            running = int(
                self._client.query(
                    "SELECT count() FROM system.processes "
                    "WHERE query_id != queryID() AND multiSearchAny(query, {tags:Array(String)})",
                    parameters={"tags": tags},
                ).result_rows[0][0]
            )
            if not running:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{running} fenced inserts of an older owner still running")
            time.sleep(0.05)

    def owners(self, topic: str, partitions: Sequence[int]) -> dict[int, str]:
        result = self._client.query(
            _OWNERS_SQL, parameters={"topic": topic, "partitions": list(partitions)}
        )
        return {int(p): str(o) for p, o in result.result_rows}

    # ------------------------------------------------------------------ state

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

    def load_ledger_filter(self, topic: str, partitions: Sequence[int], into: BloomFilter) -> int:
        """Add the ledger window of ``partitions`` to ``into``; returns the positions set.

        ClickHouse hashes the keys and streams their filter positions in
        blocks, so the worker holds one block at a time, however many ids the
        window holds (no GROUP BY either: its hash table would grow with them).
        """
        if not partitions:
            return 0
        query = (
            f"SELECT arrayJoin({probe_positions_sql(into.bits, 'h')}) AS pos "
            f"FROM (SELECT {FILTER_HASH_SQL} AS h FROM {LEDGER_TABLE} "
            "WHERE topic = {topic:String} AND kafka_partition IN {partitions:Array(UInt32)} "
            f"AND received_at >= now() - INTERVAL {LEDGER_DAYS} DAY)"
        )
        added = 0
        with self._client.query_np_stream(
            query,
            parameters={"topic": topic, "partitions": list(partitions)},
            settings={"max_block_size": FILTER_BLOCK_ROWS},
        ) as blocks:
            for block in blocks:
                positions = np.asarray(block, dtype=np.uint64).reshape(-1)
                into.add_positions(positions)
                added += len(positions)
        return added

    def look_up_ledger(self, topic: str, keys: Sequence[Key]) -> dict[Key, int]:
        """First stored offset of each key in the ledger window (absent: never stored)."""
        if not keys:
            return {}
        result = self._client.query(
            f"SELECT kafka_partition, user_id, batch_id, min(kafka_offset) FROM {LEDGER_TABLE} "
            "WHERE topic = {topic:String} AND (kafka_partition, user_id, batch_id) IN "
            "{keys:Array(Tuple(UInt32, String, String))} "
            f"AND received_at >= now() - INTERVAL {LEDGER_DAYS} DAY "
            "GROUP BY kafka_partition, user_id, batch_id",
            parameters={"topic": topic, "keys": [tuple(k) for k in keys]},
        )
        return {(int(p), str(u), str(b)): int(o) for p, u, b, o in result.result_rows}

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

    def insert_block(self, topic: str, block: Block, owner: str) -> None:
        """Insert ``block`` only if ``owner`` still holds every source partition of it.

        One ``INSERT ... SELECT`` whose WHERE the server evaluates: a writer
        that lost its partitions (a newer ``claim``) inserts nothing, however
        long it was stalled before sending. The caller asks ``owners``
        afterwards which of the two happened.
        """
        if block.rows + len(block.markers) >= MAX_BLOCK_ROWS:
            raise ValueError(f"block of {block.rows} rows would not be one insert block")
        partitions = sorted(block.markers)
        columns = ", ".join(block.column_names)
        structure = ", ".join(
            f"{name} {ch_type}"
            for name, ch_type in zip(block.column_names, block.column_types, strict=True)
        )
        tags = "".join(fence_tag(topic, p) for p in partitions)
        head = (
            f"INSERT /* {FENCE_COMMENT} {tags} */ INTO {block.table} ({columns}) SELECT {columns}"
        )
        condition = (
            f"(SELECT count() FROM ({_OWNERS_SQL}) WHERE o = {{owner:String}}) = {{n:UInt64}}"
        )
        parameters: dict[str, object] = {
            "topic": topic,
            "partitions": partitions,
            "owner": owner,
            "n": len(partitions),
            "structure": structure,
        }
        client = self._insert_clients.get()
        try:
            if self._embedded:
                with tempfile.NamedTemporaryFile(prefix="heatmap-block-", suffix=".native") as tmp:
                    tmp.write(block.payload)
                    tmp.flush()
                    client.command(
                        f"{head} FROM file({{path:String}}, 'Native', {{structure:String}}) "
                        f"WHERE {condition}",
                        parameters={**parameters, "path": tmp.name},
                        settings=INSERT_SETTINGS,
                    )
                return
            client.command(
                f"{head} FROM input({{structure:String}}) WHERE {condition} FORMAT Native",
                parameters=parameters,
                data=block.payload,
                settings=INSERT_SETTINGS,
            )
        finally:
            self._insert_clients.put(client)

    # ----------------------------------------------------------- suppression

    def suppression_version(self) -> int:
        result = self._client.query(f"SELECT max(seq) FROM {SUPPRESSION_TABLE}")
        return int(result.result_rows[0][0] or 0)

    def load_suppressions(self, after: int) -> list[SuppressionRow]:
        result = self._client.query(
            f"SELECT seq, user_id, action FROM {SUPPRESSION_TABLE} WHERE seq > {{after:UInt64}} "
            "ORDER BY seq",
            parameters={"after": after},
        )
        return [SuppressionRow(int(q), str(u), int(a)) for q, u, a in result.result_rows]

    def load_cuts(self, topic: str, partitions: Sequence[int]) -> dict[tuple[int, int], int]:
        """``(partition, seq) -> cut``; of two rows for one key (never written by the fenced
        path, see ``write_cuts``) the lowest cut, so every reader agrees."""
        if not partitions:
            return {}
        result = self._client.query(
            f"SELECT kafka_partition, seq, min(cut) FROM {CUT_TABLE} "
            "WHERE topic = {topic:String} AND kafka_partition IN {partitions:Array(UInt32)} "
            "GROUP BY kafka_partition, seq",
            parameters={"topic": topic, "partitions": list(partitions)},
        )
        return {(int(p), int(q)): int(c) for p, q, c in result.result_rows}

    def write_cuts(self, topic: str, cuts: Mapping[tuple[int, int], int], owner: str) -> None:
        """Store the cuts not stored yet, if ``owner`` holds every partition named.

        Fenced like a cell insert (server-side condition, tagged so that a
        ``claim`` waits for it): only the current owner of a partition writes
        its cuts, so a cut is never written after the new owner read them.
        The caller reads the cuts back (``load_cuts``) to learn what holds.
        """
        if not cuts:
            return
        partitions = sorted({p for p, _ in cuts})
        tags = "".join(fence_tag(topic, p) for p in partitions)
        self._client.command(
            f"INSERT /* {FENCE_COMMENT} {tags} */ INTO {CUT_TABLE} "
            "(topic, kafka_partition, seq, cut, owner) "
            "SELECT {topic:String}, t.1, t.2, t.3, {owner:String} "
            "FROM (SELECT arrayJoin({rows:Array(Tuple(UInt32, UInt64, Int64))}) AS t) "
            f"WHERE (t.1, t.2) NOT IN (SELECT kafka_partition, seq FROM {CUT_TABLE} "
            "WHERE topic = {topic:String}) "
            f"AND (SELECT count() FROM ({_OWNERS_SQL}) WHERE o = {{owner:String}}) = {{n:UInt64}}",
            parameters={
                "topic": topic,
                "owner": owner,
                "rows": [(p, q, c) for (p, q), c in sorted(cuts.items())],
                "partitions": partitions,
                "n": len(partitions),
            },
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
