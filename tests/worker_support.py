"""Helpers for the stream-worker tests and benchmark: batches, expected counts, chDB reads.

``python -m tests.worker_support query <chdb path> <database> <sql>`` prints the
rows of a query as JSON: the pytest process owns its own chDB path and cannot
open a worker subprocess's path, so tests read those through this command
once the worker has exited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from heatmap.settings import ClickHouseSettings, KafkaSettings, Settings, WorkerSettings
from heatmap_devtools.fleet import Fleet, FleetSpec
from heatmap_devtools.localinfra.process import service_env
from schemas.touch_batch import TouchBatch, encode_batch
from stream_workers.aggregator import Block
from stream_workers.app import FaustTuning, Worker
from stream_workers.dedup import BloomFilter, Key
from stream_workers.sink import CellStore, LedgerRow

CellKey = tuple[Any, ...]

TABLE_KEYS = {
    "touch_cells_by_user": "screen_name, user_id, campaign_id, event_type, "
    "toUnixTimestamp(hour), cell_x, cell_y",
    "touch_cells": "screen_name, campaign_id, event_type, toUnixTimestamp(hour), cell_x, cell_y",
    "touch_cells_64": "screen_name, campaign_id, event_type, toUnixTimestamp(hour), cell_x, cell_y",
}

# The stored columns of an all-users cell table (touch_cells, touch_cells_64), in
# table order: for tests that insert rows by hand.
TOUCH_CELLS_COLUMNS = (
    "screen_name",
    "campaign_id",
    "event_type",
    "hour",
    "cell_x",
    "cell_y",
    "events",
    "source_offset",
)


def fleet_start() -> dt.datetime:
    """00:00 UTC on the 2nd of last month: the worker tests' fleet span.

    Its 24 hours lie in one calendar month (tests can name it: ``fleet_month``)
    whatever the day the tests run, and well inside the decoder's time window.
    """
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    return last_month.replace(day=2)


def fleet_month(months_before: int = 0) -> int:
    """yyyymm of the fleet span's month, or of ``months_before`` months earlier."""
    start = fleet_start()
    index = start.year * 12 + start.month - 1 - months_before
    return (index // 12) * 100 + index % 12 + 1


def fleet_batches(
    n_batches: int,
    events_per_batch: int = 500,
    *,
    spec: FleetSpec | None = None,
    client_ids: bool = True,
    received_at_ms: int | None = None,
) -> list[TouchBatch]:
    """Batches of fleet events; each batch is one user's request (one screen visit per batch)."""
    fleet = Fleet(spec or FleetSpec(users=2_000, start=fleet_start()))
    received = int(time.time() * 1000) if received_at_ms is None else received_at_ms
    ev = fleet.events(n_batches * events_per_batch)
    batches = []
    for i in range(n_batches):
        s = slice(i * events_per_batch, (i + 1) * events_per_batch)
        user = fleet.user_id(int(ev.user[s.start]))
        screens, screen_index = np.unique(ev.screen[s], return_inverse=True)
        campaigns, campaign_index = np.unique(ev.campaign[s], return_inverse=True)
        batches.append(
            TouchBatch(
                user_id=user,
                batch_id=f"b-{i:07d}",
                client_batch_id=client_ids,
                received_at_ms=received,
                screen_dict=[fleet.screen_names[int(k)] for k in screens],
                screen_index=screen_index.astype(np.uint32),
                campaign_dict=[fleet.campaign_ids[int(k)] for k in campaigns],
                campaign_index=campaign_index.astype(np.uint32),
                x=ev.x[s].copy(),
                y=ev.y[s].copy(),
                timestamp_ms=ev.timestamp_ms[s].copy(),
                event_type=ev.event_type[s].copy(),
            )
        )
    return batches


def shifted(batch: TouchBatch, hours: int, batch_id: str) -> TouchBatch:
    """The same events ``hours`` earlier (late events), under another batch id."""
    return replace(batch, batch_id=batch_id, timestamp_ms=batch.timestamp_ms - hours * 3_600_000)


def expected_counts(batches: Iterable[TouchBatch]) -> dict[str, Counter[CellKey]]:
    """Per table, the exact per-cell counts the worker must store (numpy, per batch)."""
    out: dict[str, Counter[CellKey]] = {t: Counter() for t in TABLE_KEYS}
    for b in batches:
        screens = np.array(b.screen_dict, dtype=object)[b.screen_index]
        campaigns = np.array(b.campaign_dict, dtype=object)[b.campaign_index]
        hour = b.timestamp_ms // 3_600_000 * 3600
        cx = np.minimum((b.x * np.float32(512)).astype(np.int64), 511)
        cy = np.minimum((b.y * np.float32(512)).astype(np.int64), 511)
        for i in range(len(b)):
            base = (str(screens[i]), str(campaigns[i]), int(b.event_type[i]), int(hour[i]))
            out["touch_cells_by_user"][(base[0], b.user_id, *base[1:], int(cx[i]), int(cy[i]))] += 1
            out["touch_cells"][(*base, int(cx[i]), int(cy[i]))] += 1
            out["touch_cells_64"][(*base, int(cx[i]) >> 3, int(cy[i]) >> 3)] += 1
    return out


def stored_counts_sql(table: str) -> str:
    keys = TABLE_KEYS[table]
    return (
        f"SELECT {keys}, sum(events) FROM {table} WHERE screen_name != '' "
        f"GROUP BY {keys} HAVING sum(events) > 0"
    )


def as_counter(rows: Iterable[Sequence[Any]]) -> Counter[CellKey]:
    return Counter({tuple(r[:-1]): int(r[-1]) for r in rows})


def produce(bootstrap: str, topic: str, values: Sequence[tuple[str, bytes]]) -> None:
    """(key, value) messages, keyed by user like the gateway; waits for every ack."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "lz4", "acks": "all"}
    )
    for key, value in values:
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"


def produce_batches(bootstrap: str, topic: str, batches: Sequence[TouchBatch]) -> None:
    produce(bootstrap, topic, [(b.user_id, encode_batch(b)) for b in batches])


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe-" + topic})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        found = consumer.committed(
            [TopicPartition(topic, p) for p in range(partitions)], timeout=10
        )
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


def wait_committed(
    bootstrap: str, group: str, topic: str, partitions: int, timeout_s: float = 60.0
) -> bool:
    target = end_offsets(bootstrap, topic, partitions)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if committed_offsets(bootstrap, group, topic, partitions) == target:
            return True
        time.sleep(0.3)
    return False


def read_messages(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader-" + topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    found = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(msg)
                deadline = min(deadline, time.monotonic() + 2.0)
        return found
    finally:
        consumer.close()


def query_path(path: Path, database: str, sql: str) -> list[list[Any]]:
    """Rows of ``sql`` on another chDB path, read in a fresh subprocess."""
    out = subprocess.run(
        [sys.executable, "-m", "tests.worker_support", "query", str(path), database, sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows: list[list[Any]] = json.loads(out.stdout)
    return rows


class WorkerProcess:
    """``python -m heatmap_cli.cli worker`` with its own chDB path, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "heatmap_cli.cli", "worker"],
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 60.0, after: int = 0) -> None:
        """Until ``pattern`` (a regex) appears in the log after character ``after``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if re.search(pattern, self.text()[after:]):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in worker log:\n{self.text()[-5000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._log_file.close()

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            self.kill()


def worker_env(
    bootstrap: str, topic: str, group: str, chdb_path: Path, **extra: str
) -> dict[str, str]:
    return service_env(
        HEATMAP_KAFKA_BOOTSTRAP=bootstrap,
        HEATMAP_KAFKA_TOPIC=topic,
        HEATMAP_KAFKA_DLQ_TOPIC=topic + "-dlq",
        HEATMAP_KAFKA_PARTITIONS="3",
        HEATMAP_KAFKA_CONSUMER_GROUP=group,
        HEATMAP_CLICKHOUSE_URL=f"chdb://{chdb_path}",
        HEATMAP_GRPC_HOST="127.0.0.1",
        HEATMAP_GRPC_PORT="0",
        HEATMAP_METRICS_PORT="0",
        HEATMAP_LOG_FORMAT="text",
        HEATMAP_LOG_LEVEL="info",
        **extra,
    )


def stored_counts(path: Path, database: str = "heatmap") -> dict[str, Counter[CellKey]]:
    return {t: as_counter(query_path(path, database, stored_counts_sql(t))) for t in TABLE_KEYS}


def normalised(expected: dict[str, Counter[CellKey]]) -> dict[str, Counter[CellKey]]:
    """JSON from a subprocess turns tuples into lists and keeps ints: compare as tuples."""
    return {t: Counter({tuple(k): v for k, v in c.items()}) for t, c in expected.items()}


# ------------------------------------------------- workers in the test process

FAST = FaustTuning(session_timeout_s=6.0, rebalance_timeout_s=15.0, commit_interval_s=0.2)


def inprocess_settings(kafka: KafkaSettings, clickhouse: ClickHouseSettings) -> Settings:
    return replace(
        Settings(),
        kafka=replace(kafka, partitions=3, consumer_group="g-" + kafka.topic),
        clickhouse=clickhouse,
        worker=WorkerSettings(
            flush_interval_s=0.3, flush_max_cells=20_000, clickhouse_retry_max_s=1
        ),
    )


async def start_worker(
    settings: Settings,
    client: Client,
    started: list[Worker],
    *,
    wrap_store: Callable[[CellStore], CellStore] | None = None,
) -> tuple[Worker, CollectorRegistry]:
    registry = CollectorRegistry()
    worker = Worker(settings, registry, client, tuning=FAST, wrap_store=wrap_store)
    started.append(worker)
    await worker.start()
    return worker, registry


async def wait_all_committed(settings: Settings, timeout_s: float = 60.0) -> None:
    k = settings.kafka
    assert k.bootstrap
    target = await asyncio.to_thread(end_offsets, k.bootstrap, k.topic, 3)
    deadline = time.monotonic() + timeout_s
    got: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(committed_offsets, k.bootstrap, k.consumer_group, k.topic, 3)
        if got == target:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"committed {got} never reached {target}")


def metric(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def lag_reported(registry: CollectorRegistry) -> bool:
    return any(
        s.name == "heatmap_worker_consumer_lag" for m in registry.collect() for s in m.samples
    )


def assert_exact(client: Client, batches: Sequence[TouchBatch]) -> None:
    expected = expected_counts(batches)
    for table in TABLE_KEYS:
        got = as_counter(client.query(stored_counts_sql(table)).result_rows)
        assert got == expected[table], table


class DelegatingStore:
    """A ``CellStore`` that hands every call to ``inner``: the base of the seams below,
    which override ``insert_block``."""

    def __init__(self, inner: CellStore) -> None:
        self.inner = inner

    def insert_block(self, topic: str, block: Block, owner: str) -> None:
        self.inner.insert_block(topic, block, owner)

    def claim(self, topic: str, partitions: Sequence[int], owner: str) -> None:
        self.inner.claim(topic, partitions, owner)

    def owners(self, topic: str, partitions: Sequence[int]) -> dict[int, str]:
        return self.inner.owners(topic, partitions)

    def load_watermarks(
        self, topic: str, partitions: Sequence[int]
    ) -> dict[tuple[str, int, int], int]:
        return self.inner.load_watermarks(topic, partitions)

    def load_ledger_filter(self, topic: str, partitions: Sequence[int], into: BloomFilter) -> int:
        return self.inner.load_ledger_filter(topic, partitions, into)

    def look_up_ledger(self, topic: str, keys: Sequence[Key]) -> dict[Key, int]:
        return self.inner.look_up_ledger(topic, keys)

    def insert_ledger(self, topic: str, rows: Sequence[LedgerRow]) -> None:
        self.inner.insert_ledger(topic, rows)

    def block_landed(self, topic: str, block: Block) -> bool:
        return self.inner.block_landed(topic, block)


class StallingStore(DelegatingStore):
    """A ``CellStore`` whose cell inserts can be held before they reach ClickHouse.

    The seam for a GC pause, a SIGSTOP or a slow network in the insert path:
    once ``armed``, the next insert blocks its thread until ``release`` is
    set (``stalled`` tells that one is being held), then goes on to the real
    store as if nothing had happened.
    """

    def __init__(self, inner: CellStore) -> None:
        super().__init__(inner)
        self.armed = threading.Event()
        self.stalled = threading.Event()
        self.release = threading.Event()

    def insert_block(self, topic: str, block: Block, owner: str) -> None:
        if self.armed.is_set() and not self.release.is_set():
            self.stalled.set()
            self.release.wait(300)
        self.inner.insert_block(topic, block, owner)


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 4 or argv[0] != "query":
        print("usage: python -m tests.worker_support query <path> <database> <sql>")
        return 2
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{argv[1]}", database=argv[2])
    rows = client.query(argv[3]).result_rows
    json.dump([list(r) for r in rows], sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
