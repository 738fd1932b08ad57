"""Stream-worker benchmark: events/s from a pre-filled topic to rows in ClickHouse.

    python -m bench.bench_worker [--events 3000000] [--partitions 6] [--repeats 3]

Starts its own Kafka broker unless ``HEATMAP_KAFKA_BOOTSTRAP`` is set, fills a
fresh topic with synthetic-fleet batches (``heatmap_devtools.fleet``, 500 events per
batch, lz4 like the gateway), then in the same run:

* raw: a confluent-kafka consumer reads the whole topic without processing;
* worker: the real ``Worker`` (Faust agent, decode, dedup, numpy aggregation,
  Native inserts into chDB in this process) consumes the same topic under a
  fresh consumer group into a fresh database, timed from its partition
  assignment until every partition's last offset is flushed to ClickHouse
  (and, reported beside it, until those offsets are committed).

Prints medians over the repetitions, the ratio worker/raw, the worker's CPU
time per event (all its threads: Faust, numpy, the in-process chDB engine; a
figure that does not depend on what else runs on the machine), and the
reduction ratio (events per stored row) per table: per flush (rows inserted)
and fully merged (distinct cells).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from faust.types import TP
from prometheus_client import CollectorRegistry

from heatmap.clickhouse import connect, migrate
from heatmap.settings import ClickHouseSettings, KafkaSettings, Settings
from heatmap_devtools.fleet import FLEET_KINDS, FleetSpec
from schemas.touch_batch import encode_batch
from stream_workers.aggregator import TABLE_NAMES
from stream_workers.app import Worker
from tests.worker_support import end_offsets, fleet_batches, produce

logger = logging.getLogger("bench")

BATCH = 500


@contextlib.contextmanager
def broker() -> Iterator[str]:
    import os

    if os.environ.get("HEATMAP_KAFKA_BOOTSTRAP"):
        yield os.environ["HEATMAP_KAFKA_BOOTSTRAP"]
        return
    from heatmap_devtools.localinfra.kafka import KafkaBroker

    with tempfile.TemporaryDirectory(prefix="bench-kafka-") as d:
        kafka = KafkaBroker(Path(d))
        kafka.start()
        try:
            yield kafka.bootstrap
        finally:
            kafka.stop()


def fill(bootstrap: str, topic: str, partitions: int, events: int, fleet: str) -> int:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(30)
    n_batches = events // BATCH
    sent = 0
    chunk = 1000
    for start in range(0, n_batches, chunk):
        batches = fleet_batches(
            min(chunk, n_batches - start),
            BATCH,
            spec=replace(FleetSpec(kind=fleet), seed=7 + start),
        )
        batches = [replace(b, batch_id=f"{start}-{b.batch_id}") for b in batches]
        produce(bootstrap, topic, [(b.user_id, encode_batch(b)) for b in batches])
        sent += len(batches) * BATCH
    return sent


def raw_consume(bootstrap: str, topic: str, partitions: int) -> float:
    """Seconds for a bare confluent-kafka consumer to read the whole topic (values touched,
    nothing decoded), from ``assign`` on an already connected consumer."""
    ends = end_offsets(bootstrap, topic, partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "raw-" + uuid.uuid4().hex[:8],
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 8 * 1024 * 1024,
        }
    )
    consumer.list_topics(topic, timeout=10)
    remaining = {p for p, end in ends.items() if end > 0}
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    size = 0
    try:
        while remaining:
            for msg in consumer.consume(500, timeout=1.0):
                value, partition = msg.value(), msg.partition()
                if msg.error() or value is None or partition is None:
                    continue
                size += len(value)
                if (msg.offset() or 0) >= ends[partition] - 1:
                    remaining.discard(partition)
        return time.perf_counter() - started
    finally:
        consumer.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 600.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("benchmark run did not finish")


async def worker_run(settings: Settings, ends: dict[int, int], chdb_url: str) -> dict[str, Any]:
    database = "bench_" + uuid.uuid4().hex[:8]
    ch = ClickHouseSettings(url=chdb_url, database=database)
    migrate(ch)
    client = connect(ch)
    settings = replace(
        settings,
        clickhouse=ch,
        kafka=replace(settings.kafka, consumer_group="bench-" + uuid.uuid4().hex[:8]),
    )
    registry = CollectorRegistry()
    worker = Worker(settings, registry, client)
    t0 = time.perf_counter()
    await worker.start()
    await until(worker.healthy)
    assigned = time.perf_counter()
    cpu_start = time.process_time()
    target = {p: end - 1 for p, end in ends.items() if end > 0}
    await until(
        lambda: all(worker.processor.flushed_offsets.get(p, -1) >= o for p, o in target.items())
    )
    flushed = time.perf_counter()
    cpu = time.process_time() - cpu_start  # every thread of this process: Faust, numpy, chDB

    def all_committed() -> bool:
        # Faust's own record of what it committed to the group (no extra consumer here).
        committed = cast(Any, worker.app.consumer)._committed_offset
        return all((committed.get(TP(settings.kafka.topic, p)) or 0) >= ends[p] for p in target)

    await until(all_committed)
    committed_at = time.perf_counter()
    await worker.stop()
    inserted = {
        s.labels["table"]: int(s.value)
        for m in registry.collect()
        for s in m.samples
        if s.name == "heatmap_worker_cells_flushed_total"
    }
    rows = {}
    for table in TABLE_NAMES:
        keys = "screen_name, campaign_id, event_type, hour, cell_x, cell_y" + (
            ", user_id" if table == "touch_cells_by_user" else ""
        )
        distinct = client.query(
            f"SELECT count() FROM (SELECT {keys} FROM {table} WHERE screen_name != '' "
            f"GROUP BY {keys})"
        ).result_rows[0][0]
        events = client.query(
            f"SELECT sum(events) FROM {table} WHERE screen_name != ''"
        ).result_rows[0][0]
        rows[table] = {
            "rows_inserted": inserted.get(table, 0),
            "cells": int(distinct),
            "events": int(events),
        }
    client.command(f"DROP DATABASE {database}")
    client.close()
    return {
        "startup_s": assigned - t0,
        "cpu_s": cpu,
        "to_flushed_s": flushed - assigned,
        "to_committed_s": committed_at - assigned,
        "tables": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fleet", choices=FLEET_KINDS, default="synthetic", help="workload (docs/fleets.md)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="bench-chdb-") as chdb_dir:
        topic = "bench-" + uuid.uuid4().hex[:8]
        t = time.perf_counter()
        events = fill(bootstrap, topic, args.partitions, args.events, args.fleet)
        logger.info("filled %s with %d events in %.1fs", topic, events, time.perf_counter() - t)
        ends = end_offsets(bootstrap, topic, args.partitions)
        settings = replace(
            Settings(),
            kafka=KafkaSettings(
                bootstrap=bootstrap,
                topic=topic,
                dlq_topic=topic + "-dlq",
                partitions=args.partitions,
            ),
        )
        raw: list[float] = []
        runs = []
        for i in range(args.repeats):
            raw.append(raw_consume(bootstrap, topic, args.partitions))
            run = asyncio.run(worker_run(settings, ends, f"chdb://{chdb_dir}"))
            runs.append(run)
            logger.info(
                "run %d: raw %.0f ev/s, worker %.0f ev/s (flushed), %.0f ev/s (committed)",
                i + 1,
                events / raw[-1],
                events / run["to_flushed_s"],
                events / run["to_committed_s"],
            )
        raw_rate = statistics.median(events / s for s in raw)
        worker_rate = statistics.median(events / r["to_flushed_s"] for r in runs)
        committed_rate = statistics.median(events / r["to_committed_s"] for r in runs)
        tables = runs[-1]["tables"]
        report = {
            "events": events,
            "fleet": args.fleet,
            "partitions": args.partitions,
            "repeats": args.repeats,
            "raw_consume_events_per_s": round(raw_rate),
            "worker_events_per_s_to_flushed": round(worker_rate),
            "worker_events_per_s_to_committed": round(committed_rate),
            "worker_vs_raw": round(worker_rate / raw_rate, 3),
            "worker_cpu_us_per_event": round(
                statistics.median(r["cpu_s"] for r in runs) / events * 1e6, 3
            ),
            "worker_startup_s": round(statistics.median(r["startup_s"] for r in runs), 2),
            "reduction": {
                t: {
                    **v,
                    "events_per_inserted_row": round(events / max(v["rows_inserted"], 1), 2),
                    "events_per_cell": round(events / max(v["cells"], 1), 2),
                }
                for t, v in tables.items()
            },
            "targets": {
                "events_per_s>=500k": worker_rate >= 500_000,
                "worker>=50%_of_raw": worker_rate >= 0.5 * raw_rate,
            },
        }
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
