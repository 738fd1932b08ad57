"""One flush, start to finish: decode, dead-letter, deduplicate, aggregate, insert.

Independent of Faust: the agent hands ``Processor.prepare`` the raw records
of one ``noack_take`` batch (decode, dead-letter, dedup, aggregate), then
``Processor.store`` (inserts), and acks the records only after ``store``
returned, i.e. once everything is durably in ClickHouse (or dead-lettered); a
failed ClickHouse call is retried with backoff for as long as it takes, never
skipped, because Faust would commit past a single un-acked offset.

Order of one flush (per chunk of at most ``chunk_events`` events, in offset
order): ledger rows of new client batch ids, then per table and month ONE
insert holding the rows and the marker rows (up to ``insert_concurrency`` of
them at once), then the in-memory watermarks.

Fencing: each assignment gets an owner token; before the first flush of a
partition the processor claims it in ClickHouse (and only then reads its
watermarks), and every cell insert carries the token of the assignment its
batch was prepared under. An insert of a writer that lost its partitions
inserts nothing; the processor finds out (``owners``) and raises ``Fenced``,
which crashes the app: a zombie must not go on acking.

Suppression (docs/privacy.md): before deciding the records of a batch, the
processor reads the suppression list's version and, for every version whose
cut on a loaded partition is not stored yet, writes the cut (above every
offset it has decided, or that any table holds, under the older versions).
Records of an erased user above the cut are then left out of every table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from schemas.touch_batch import BatchFormatError, TouchBatch, decode_batch, decode_batches
from stream_workers.aggregator import MAX_TIMESTAMP_MS, TABLE_NAMES, Block, Record, aggregate
from stream_workers.dedup import BatchLedger, Key
from stream_workers.metrics import WorkerMetrics
from stream_workers.sink import MAX_BLOCK_ROWS, CellStore, LedgerRow, SuppressionStore
from stream_workers.suppression import Suppressions

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH_EVENTS = MAX_BLOCK_ROWS // 4


@dataclass(frozen=True)
class RawRecord:
    partition: int
    offset: int
    value: bytes | None


DeadLetterSink = Callable[[RawRecord, str], Awaitable[None]]


@dataclass(frozen=True)
class Chunk:
    """At most ``chunk_events`` events: ledger rows, then one insert per (table, month)."""

    ledger_rows: list[LedgerRow]
    blocks: list[Block]
    events: int  # events counted (not duplicate, not dead-lettered)
    partitions: tuple[int, ...]  # source partitions of the blocks


@dataclass(frozen=True)
class Prepared:
    raw: Sequence[RawRecord]
    chunks: list[Chunk]
    seconds: float
    owner: str  # token of the assignment the batch was prepared under


class FlushAbandoned(RuntimeError):
    """The worker is stopping while ClickHouse fails: the batch stays un-acked (replayed later)."""


class Fenced(RuntimeError):
    """Another worker claimed a partition of this flush: this worker must stop writing.

    Whatever of the flush landed before the claim is visible to the new
    owner's watermarks; nothing of it can land after. The batch stays
    un-acked, and the app crashes (restarted fresh, it rejoins the group).
    """


class Processor:
    def __init__(
        self,
        store: CellStore,
        topic: str,
        metrics: WorkerMetrics,
        dead_letter: DeadLetterSink,
        *,
        chunk_events: int = 500_000,
        retry_max_s: float = 30.0,
        ledger_entries: int = 200_000,
        ledger_filter_bytes: int = 32 << 20,
        suppressions: SuppressionStore | None = None,
        insert_concurrency: int = 1,
    ) -> None:
        self.cells = store
        # A chunk's inserts (one per table and month) in flight at once; the
        # store needs as many clients (``ClickHouseCellStore(insert_clients=)``).
        self._insert_slots = asyncio.Semaphore(max(1, insert_concurrency))
        # None: no suppression list (unit tests of the flush alone).
        self.suppression_store = suppressions
        self.suppressions = Suppressions()
        self.decided: dict[int, int] = {}  # partition -> highest offset decided since the claim
        self.replay_limit: dict[int, int] = {}  # partition -> highest offset any table held
        self._state_lock = asyncio.Lock()
        self.topic = topic
        self.metrics = metrics
        self._dead_letter = dead_letter
        self.chunk_events = max(1, min(chunk_events, MAX_BLOCK_ROWS // 2))
        self.retry_max_s = retry_max_s
        self.watermarks: dict[tuple[str, int, int], int] = {}
        self.ledger = BatchLedger(ledger_entries, ledger_filter_bytes)
        self._loaded: set[int] = set()
        self.flushed_offsets: dict[int, int] = {}  # partition -> highest offset done
        self.owner = uuid.uuid4().hex
        self.failing_since: float | None = None
        self.stopping = False
        self._wake = asyncio.Event()

    # ------------------------------------------------------------ lifecycle

    def reset(self) -> None:
        """Forget per-partition state (a rebalance: another worker may have written since).

        A new owner token, too: a flush prepared before the rebalance keeps
        the old one, so if it is still in flight (this worker was stalled
        past the rebalance timeout) it cannot land on a partition that was
        claimed since, even by this same worker.
        """
        self.suppressions.forget(self._loaded)
        self._loaded.clear()
        self.decided.clear()
        self.replay_limit.clear()
        self.watermarks.clear()
        self.ledger.forget()
        self.flushed_offsets.clear()
        self.owner = uuid.uuid4().hex

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    # ------------------------------------------------------------- the flush

    async def process(self, raw: Sequence[RawRecord]) -> None:
        """Prepare and store one batch of records (``prepare`` then ``store``)."""
        await self.store(await self.prepare(raw))

    async def prepare(self, raw: Sequence[RawRecord]) -> Prepared:
        """Decode, dead-letter, deduplicate and aggregate: everything but the inserts.

        May run while the previous batch's ``store`` is in flight (the agent
        pipelines them): the watermarks it reads may then miss that batch's
        markers, which changes nothing, because per partition this batch's
        offsets are all above them. Holds the state lock throughout, so that
        the idle timer never brings a suppression version into force half-way
        through a batch.
        """
        async with self._state_lock:
            return await self._prepare(raw)

    async def _prepare(self, raw: Sequence[RawRecord]) -> Prepared:
        started = time.perf_counter()
        owner = self.owner
        self.metrics.messages.inc(len(raw))
        records: list[Record] = []
        items = sorted(raw, key=lambda r: (r.partition, r.offset))
        for item, (record, reason) in zip(items, self._decode_all(items), strict=True):
            if record is None:
                await self._send_dead_letter(item, reason)
            else:
                records.append(record)
        await self._load(sorted({r.partition for r in raw} - self._loaded), owner)
        await self._refresh_suppressions(owner)
        chunks: list[Chunk] = []
        chunk: list[Record] = []
        events = 0
        for record in records:
            if chunk and events + len(record.batch) > self.chunk_events:
                chunks.append(await self._prepare_chunk(chunk))
                chunk, events = [], 0
            chunk.append(record)
            events += len(record.batch)
        if chunk:
            chunks.append(await self._prepare_chunk(chunk))
        for item in raw:
            self.decided[item.partition] = max(self.decided.get(item.partition, -1), item.offset)
        return Prepared(raw, chunks, time.perf_counter() - started, owner)

    async def store(self, prepared: Prepared) -> None:
        """Insert a prepared batch, in order; returns once all of it is in ClickHouse."""
        started = time.perf_counter()
        for chunk in prepared.chunks:
            await self._store_chunk(chunk, prepared.owner)
        for item in prepared.raw:
            done = self.flushed_offsets.get(item.partition, -1)
            self.flushed_offsets[item.partition] = max(done, item.offset)
        self.metrics.flush_seconds.observe(prepared.seconds + time.perf_counter() - started)

    def _decode_all(self, items: Sequence[RawRecord]) -> list[tuple[Record | None, str]]:
        """``_decode`` of every item, the messages decoded together (``decode_batches``:
        the same outcome per message as alone, at a fraction of the per-message cost)."""
        try:
            decoded = iter(decode_batches([i.value for i in items if i.value is not None]))
        except Exception:
            logger.exception("decoding a batch of messages failed: decoding them one by one")
            return [self._decode(item) for item in items]
        return [self._decode(i, None if i.value is None else next(decoded)) for i in items]

    def _decode(
        self, item: RawRecord, decoded: TouchBatch | BatchFormatError | None = None
    ) -> tuple[Record | None, str]:
        try:
            if item.value is None:
                raise BatchFormatError("empty message")
            if decoded is None:
                decoded = decode_batch(item.value)
            if isinstance(decoded, BatchFormatError):
                raise decoded
            batch = decoded
            if int(batch.timestamp_ms.max()) >= MAX_TIMESTAMP_MS:
                raise BatchFormatError("timestamp after 2106 (outside DateTime)")
            if len(batch) > MAX_BATCH_EVENTS:
                # The API allows 500 per request; a giant message must not stall the
                # partition by making an insert that cannot stay one block.
                raise BatchFormatError(f"{len(batch)} events in one message")
        except BatchFormatError as e:
            return None, str(e)
        except Exception as e:  # any other decoder failure is still a poison message
            logger.exception("unexpected decode failure")
            return None, f"decode failed: {type(e).__name__}: {e}"
        return Record(item.partition, item.offset, batch), ""

    async def _send_dead_letter(self, item: RawRecord, reason: str) -> None:
        kind = reason.split(":")[0].split(" ")[0] or "invalid"
        logger.warning(
            "dead letter %s[%d]@%d: %s",
            self.topic,
            item.partition,
            item.offset,
            reason,
            extra={"topic": self.topic, "partition": item.partition, "offset": item.offset},
        )
        delay = 0.1
        while True:
            try:
                await self._dead_letter(item, reason)
                break
            except Exception as e:
                if self.stopping:
                    raise FlushAbandoned("stopping while the dead-letter topic fails") from e
                logger.warning("dead-letter send failed (%s), retrying", e)
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        self.metrics.dead_letters.labels(reason=kind).inc()

    async def _load(self, partitions: list[int], owner: str) -> None:
        if not partitions:
            return
        # Claim first: once it returns, no earlier owner's insert can land, so
        # the watermarks read next are final for everything before this owner.
        await self._retry("claim partitions", self.cells.claim, self.topic, partitions, owner)
        marks = await self._retry(
            "load watermarks", self.cells.load_watermarks, self.topic, partitions
        )
        # A retry after a failure part-way sets some bits twice: harmless.
        positions = await self._retry(
            "load ledger filter",
            self.cells.load_ledger_filter,
            self.topic,
            partitions,
            self.ledger.filter,
        )
        cuts: dict[tuple[int, int], int] = {}
        if self.suppression_store is not None:
            cuts = await self._retry(
                "load suppression cuts", self.suppression_store.load_cuts, self.topic, partitions
            )
        if owner != self.owner:  # a rebalance happened meanwhile: state of a past assignment
            raise Fenced(f"{self.topic}[{partitions}]: reassigned while loading")
        self.watermarks.update(marks)
        self.suppressions.set_cuts(cuts)
        for (_, p, _), offset in marks.items():
            self.replay_limit[p] = max(self.replay_limit.get(p, -1), offset)
        for p in partitions:
            self.ledger.load(p)
            self._loaded.add(p)
        logger.info(
            "loaded state of %s[%s] (claimed): %d watermarks, %d ledger filter positions",
            self.topic,
            ",".join(map(str, partitions)),
            len(marks),
            positions,
        )

    async def refresh_idle(self, assigned: Sequence[int]) -> None:
        """Claim idle assigned partitions and write their cuts (a timer calls it).

        An erasure waits for a cut on every partition: a partition without
        traffic must get one too.
        """
        if self.suppression_store is None:
            return
        async with self._state_lock:
            owner = self.owner
            version = await self._retry(
                "suppression version", self.suppression_store.suppression_version
            )
            if not version:  # nothing was ever erased: no cut to write
                return
            idle = sorted(set(assigned) - self._loaded)
            if idle:
                await self._load(idle, owner)
            await self._refresh_suppressions(owner, version)

    async def _refresh_suppressions(self, owner: str, version: int | None = None) -> None:
        """Learn new versions; store the cut of every version a loaded partition lacks.

        The cut is the highest offset of the partition decided under the older
        versions: by this owner (``decided``, batches maybe still in flight) or
        by an earlier one (what any table holds, ``replay_limit``). Records
        above it are decided under the new version, only after it is stored.
        """
        store = self.suppression_store
        if store is None:
            return
        if version is None:
            version = await self._retry("suppression version", store.suppression_version)
        if version > self.suppressions.version:
            rows = await self._retry(
                "load suppressions", store.load_suppressions, self.suppressions.version
            )
            self.suppressions.add(rows)
        missing = self.suppressions.missing(sorted(self._loaded))
        if not missing:
            return
        cuts = {
            (p, seq): max(self.decided.get(p, -1), self.replay_limit.get(p, -1))
            for p, seq in missing
        }
        partitions = sorted({p for p, _ in missing})
        await self._retry("write suppression cuts", store.write_cuts, self.topic, cuts, owner)
        stored = await self._retry("load suppression cuts", store.load_cuts, self.topic, partitions)
        if owner != self.owner:
            raise Fenced(f"{self.topic}{partitions}: reassigned while writing suppression cuts")
        self.suppressions.set_cuts(stored)
        if self.suppressions.missing(partitions):
            await self._check_owner(partitions, owner)
            raise RuntimeError(f"suppression cuts of {self.topic}{partitions} not stored")
        logger.info(
            "suppression version %d in force on %s[%s]",
            self.suppressions.version,
            self.topic,
            ",".join(map(str, partitions)),
        )

    async def _prepare_chunk(self, chunk: list[Record]) -> Chunk:
        counted: list[Record] = []
        ledger_rows: list[LedgerRow] = []
        keys: list[Key] = [
            (r.partition, r.batch.user_id, r.batch.batch_id)
            for r in chunk
            if r.batch.client_batch_id and r.batch.batch_id
        ]
        unknown = self.ledger.to_look_up(keys)
        found: dict[Key, int] = {}
        if unknown:  # old retries and filter false positives only
            found = await self._retry(
                "ledger look-up", self.cells.look_up_ledger, self.topic, unknown
            )
        suppressed = 0
        for r in chunk:
            b = r.batch
            if b.client_batch_id and b.batch_id:
                duplicate, record = self.ledger.admit(
                    (r.partition, b.user_id, b.batch_id), r.offset, found
                )
                if duplicate:
                    self.metrics.duplicate_batches.inc()
                    logger.info(
                        "duplicate batch %s/%s at %s[%d]@%d dropped",
                        b.user_id,
                        b.batch_id,
                        self.topic,
                        r.partition,
                        r.offset,
                    )
                    continue
                if record:
                    ledger_rows.append(
                        LedgerRow(r.partition, b.user_id, b.batch_id, r.offset, b.received_at_ms)
                    )
            if self.suppressions.history and self.suppressions.suppressed(
                b.user_id, r.partition, r.offset
            ):
                # Decided the same way by every replay (the cuts are stored); in
                # the ledger all the same, so a retry after an un-erase is not new.
                suppressed += len(b)
                continue
            counted.append(r)
        if suppressed:
            self.metrics.suppressed_events.inc(suppressed)
        blocks: list[Block] = []
        if counted:
            blocks = await asyncio.to_thread(aggregate, counted, self.topic, dict(self.watermarks))
        return Chunk(
            ledger_rows,
            blocks,
            sum(len(r.batch) for r in counted),
            tuple(sorted({r.partition for r in counted})),
        )

    async def _store_chunk(self, chunk: Chunk, owner: str) -> None:
        if chunk.ledger_rows:
            # Not fenced: a late ledger row of a zombie repeats one the new
            # owner writes for the same record (same key, same offset).
            await self._retry(
                "ledger insert", self.cells.insert_ledger, self.topic, chunk.ledger_rows
            )
            self.ledger.stored((r.partition, r.user_id, r.batch_id) for r in chunk.ledger_rows)
        blocks, total = chunk.blocks, chunk.events
        if not total:
            return
        # Side by side: each insert is a different (table, month), atomic with
        # its own markers, so their order does not matter (docs/exactly-once.md);
        # the chunk is done, and the next one starts, only when all have landed.
        outcomes = await asyncio.gather(
            *(self._insert(block, owner) for block in blocks), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        if blocks:
            await self._check_owner(chunk.partitions, owner)
        for block in blocks:
            for partition, offset in block.markers.items():
                key = (block.table, partition, block.month)
                self.watermarks[key] = max(self.watermarks.get(key, -1), offset)
            self.metrics.cells_flushed.labels(table=block.table).inc(block.rows)
        per_table = dict.fromkeys(TABLE_NAMES, 0)
        for block in blocks:
            per_table[block.table] = per_table.get(block.table, 0) + block.events
        for table, stored in per_table.items():
            if stored < total:
                self.metrics.replayed_events.labels(table=table).inc(total - stored)
                logger.info(
                    "replay: %d of %d events already stored in %s (offset watermarks)",
                    total - stored,
                    total,
                    table,
                )
        self.metrics.events.inc(total)

    async def _insert(self, block: Block, owner: str) -> None:
        attempts = 0
        partitions = tuple(sorted(block.markers))

        def insert() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # Ownership before every retry: a long outage may have outlasted
                # the rebalance timeout, and then retrying is pointless.
                self._raise_if_fenced(partitions, owner)
                if self.cells.block_landed(self.topic, block):
                    logger.info(
                        "insert into %s %d had landed before failing", block.table, block.month
                    )
                    return
            self.cells.insert_block(self.topic, block, owner)

        async with self._insert_slots:
            await self._retry(f"insert into {block.table}", insert)

    async def _check_owner(self, partitions: Sequence[int], owner: str) -> None:
        await self._retry("ownership check", self._raise_if_fenced, partitions, owner)

    def _raise_if_fenced(self, partitions: Sequence[int], owner: str) -> None:
        current = self.cells.owners(self.topic, partitions)
        lost = sorted(p for p in partitions if current.get(p) != owner)
        if lost:
            self.metrics.fenced_flushes.inc()
            raise Fenced(
                f"{self.topic}{lost} claimed by another worker while this flush was in flight"
            )

    # --------------------------------------------------------------- retries

    async def _retry(self, what: str, fn: Callable[..., T], *args: object) -> T:
        delay = 0.1
        while True:
            try:
                result = await asyncio.to_thread(fn, *args)
            except Fenced:
                raise
            except Exception as e:
                self.metrics.clickhouse_failures.inc()
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                if self.stopping:
                    raise FlushAbandoned(f"{what}: stopping while ClickHouse fails") from e
                logger.warning(
                    "%s failed, nothing committed, retrying in %.1fs: %s", what, delay, e
                )
                await self._sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                continue
            if self.failing_since is not None:
                logger.info("%s succeeded after %.1fs of failures", what, self.failing_for())
                self.failing_since = None
            return result

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
