"""Stream-worker benchmark: events/s from a pre-filled topic to rows in ClickHouse.

    python -m bench.bench_worker [--events 3000000] [--partitions 6] [--repeats 3]
        [--fleet synthetic|realistic] [--flush-max-cells N] [--variants A,B]
        [--profile out.txt]

Starts its own Kafka broker unless ``HEATMAP_KAFKA_BOOTSTRAP`` is set, fills a
fresh topic with synthetic-fleet batches (``heatmap_devtools.fleet``, 500 events per
batch, lz4 like the gateway), then in the same run:

* raw: a confluent-kafka consumer reads the whole topic without processing;
* worker: the real ``Worker`` (Faust agent, decode, dedup, numpy aggregation,
  Native inserts into chDB in this process) consumes the same topic under a
  fresh consumer group into a fresh database, timed from its partition
  assignment until every partition's last offset is flushed to ClickHouse
  (and, reported beside it, until those offsets are committed).

Prints medians over the repetitions, the ratio worker/raw, the CPU time per
event of both (user + sys of every thread of this process over the timed
window: Faust, numpy, the in-process chDB engine; the raw reference's
librdkafka threads; a figure that does not depend on what else runs on the
machine), the worker's CPU split by thread kind (Python threads vs the
engine's pools, from ``/proc/self/task``), and the reduction ratio (events
per stored row) per table: per flush (rows inserted) and fully merged
(distinct cells).

``--variants`` runs several worker configurations alternately in the same
run (each repetition: raw, then every variant), e.g.
``--variants default,flush500k,noproj``: ``flushN`` sets
``HEATMAP_FLUSH_MAX_CELLS`` to N (``k`` = 1000), ``noproj`` drops the
tables' projections in the bench's fresh database (what they cost the
worker's engine), ``lz4`` removes the migrations' column codecs there,
``threadsN`` caps the engine's ``max_threads`` for the worker's session at
N (inserts in turn, on that session), ``insertsN`` sets
``HEATMAP_INSERT_CONCURRENCY`` (a chunk's inserts in flight at once, each on
its own connection) to N. ``--profile`` samples the worker's Python threads
with py-spy (``pip install py-spy``) during the timed window of the last
repetition and writes the hottest frames (self and inclusive shares).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
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
# The counts after a run read every row; a loaded machine outlasts the session's 10 s.
SLOW_QUERY = {"max_execution_time": 600}


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


def raw_consume(bootstrap: str, topic: str, partitions: int) -> tuple[float, float]:
    """Seconds (and process CPU seconds) for a bare confluent-kafka consumer to read the
    whole topic (values touched, nothing decoded), from ``assign`` on an already
    connected consumer."""
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
    started, cpu_started = time.perf_counter(), time.process_time()
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
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        consumer.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 600.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("benchmark run did not finish")


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + sys) per thread kind of this process, from ``/proc/self/task``.

    Python threads carry the process name (``python``); the chDB engine names
    its pools (``ThreadPool``, ``MergeMutate``, ``BgSchPool``, ...). Empty off Linux.
    """
    out: dict[str, float] = collections.defaultdict(float)
    tick = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/self/task/{task}/stat") as f:
                    stat = f.read()
                name = stat[stat.index("(") + 1 : stat.rindex(")")].rstrip("0123456789_-")
                fields = stat[stat.rindex(")") + 2 :].split()
                out[name or "?"] += (int(fields[11]) + int(fields[12])) / tick
    return dict(out)


def cpu_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per thread kind, CPU seconds between two ``thread_cpu`` readings (threads that
    ended in between are missing: the total is ``time.process_time``'s)."""
    split = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return {k: v for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v > 0}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One worker configuration of a ``--variants`` run."""

    name: str
    flush_max_cells: int | None = None
    drop_projections: bool = False
    default_codecs: bool = False
    max_threads: int | None = None
    insert_concurrency: int | None = None

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name == "default":
            return cls(name)
        if name == "noproj":
            return cls(name, drop_projections=True)
        if name == "lz4":
            return cls(name, default_codecs=True)
        if name.startswith("flush"):
            n = name.removeprefix("flush")
            return cls(name, flush_max_cells=int(n[:-1]) * 1000 if n.endswith("k") else int(n))
        if name.startswith("threads"):
            # The cap is set on the worker's own client: inserts stay on it.
            return cls(name, max_threads=int(name.removeprefix("threads")), insert_concurrency=1)
        if name.startswith("inserts"):
            return cls(name, insert_concurrency=int(name.removeprefix("inserts")))
        raise SystemExit(
            f"unknown variant {name!r} (default, noproj, lz4, flushN, threadsN, insertsN)"
        )


def drop_projections(client: Any) -> None:
    for table in TABLE_NAMES:
        names = client.query(
            "SELECT name FROM system.projections WHERE database = currentDatabase() "
            "AND table = {t:String}",
            parameters={"t": table},
        ).result_rows
        for (name,) in names:
            client.command(f"ALTER TABLE {table} DROP PROJECTION {name}")


def default_codecs(client: Any) -> None:
    """Back to the engine's default compression (LZ4) on the cell tables: what the
    migrations' column codecs cost the worker's inserts and merges."""
    for table in TABLE_NAMES:
        columns = client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() "
            "AND table = {t:String} AND compression_codec != '' AND default_kind != 'ALIAS'",
            parameters={"t": table},
        ).result_rows
        for (column,) in columns:
            client.command(f"ALTER TABLE {table} MODIFY COLUMN {column} REMOVE CODEC")
        with contextlib.suppress(Exception):  # only set by a migration that chose codecs
            client.command(f"ALTER TABLE {table} RESET SETTING default_compression_codec")


class Profiler:
    """py-spy sampling this process's Python threads between ``start`` and ``stop``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw = path.with_suffix(".raw")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        spy = Path(sys.executable).with_name("py-spy")
        self._proc = subprocess.Popen(
            [
                str(spy),
                *("record", "--pid", str(os.getpid()), "--rate", "100", "--nonblocking"),
                *("--format", "raw", "--output", str(self.raw)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self._proc.wait(60)
        self.path.write_text(summarise_profile(self.raw.read_text()))


# Stages of the worker by the frames of a sample (first match wins).
PROFILE_STAGES = (
    (
        "engine call (chDB Connection.query: the engine on this thread, or waiting for it)",
        "Connection.query (",
    ),
    ("Native block to a temporary file (chDB reads the insert from it)", "tempfile.py"),
    ("aggregate + Native encode (numpy)", "aggregate (stream_workers/aggregator.py"),
    ("decode + validate (protobuf, numpy)", "schemas/touch_batch.py"),
    ("aiokafka fetch and record unpacking", "aiokafka/"),
    ("Faust streams, acks, commits", "faust/"),
    ("mode (Faust's service threads)", "mode/"),
    ("processor bookkeeping (dedup, chunks)", "stream_workers/"),
    ("asyncio loop", "asyncio/"),
)


def summarise_profile(raw: str, top: int = 40) -> str:
    """Self and inclusive shares of the busiest frames of a py-spy raw (collapsed) profile.

    Sampling without pausing the process (``--nonblocking``) counts waits as busy:
    the event loop's select and idle pool threads are left out here. Time in
    ``Connection.query`` is the engine working on the calling thread (or waiting
    for the engine's lock)."""
    idle = ("EpollSelector.select (", "_worker (concurrent/futures/thread.py:81)")
    self_n: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first names the thread
        if not frames or frames[-1].startswith(idle):
            continue
        n = int(count)
        total += n
        self_n[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        joined = ";".join(frames)
        stage = next((name for name, key in PROFILE_STAGES if key in joined), "other")
        stages[stage] += n
    total = max(total, 1)
    lines = [f"busy samples of the Python threads: {total}", "", "by stage:"]
    lines += [f"{n / total:6.1%}  {name}" for name, n in stages.most_common()]
    lines += ["", "self:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in self_n.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"{n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"


async def worker_run(
    settings: Settings,
    ends: dict[int, int],
    chdb_url: str,
    variant: Variant,
    profiler: Profiler | None = None,
) -> dict[str, Any]:
    database = "bench_" + uuid.uuid4().hex[:8]
    ch = ClickHouseSettings(url=chdb_url, database=database)
    migrate(ch)
    client = connect(ch)
    if variant.drop_projections:
        drop_projections(client)
    if variant.default_codecs:
        default_codecs(client)
    if variant.max_threads is not None:
        client.set_client_setting("max_threads", variant.max_threads)
    worker_settings = settings.worker
    if variant.flush_max_cells is not None:
        worker_settings = replace(worker_settings, flush_max_cells=variant.flush_max_cells)
    if variant.insert_concurrency is not None:
        worker_settings = replace(worker_settings, insert_concurrency=variant.insert_concurrency)
    settings = replace(
        settings,
        clickhouse=ch,
        worker=worker_settings,
        kafka=replace(settings.kafka, consumer_group="bench-" + uuid.uuid4().hex[:8]),
    )
    registry = CollectorRegistry()
    worker = Worker(settings, registry, client)
    t0 = time.perf_counter()
    await worker.start()
    await until(worker.healthy)
    assigned = time.perf_counter()
    cpu_start, threads_start = time.process_time(), thread_cpu()
    if profiler is not None:
        profiler.start()
    target = {p: end - 1 for p, end in ends.items() if end > 0}
    await until(
        lambda: all(worker.processor.flushed_offsets.get(p, -1) >= o for p, o in target.items())
    )
    flushed = time.perf_counter()
    cpu = time.process_time() - cpu_start  # every thread of this process: Faust, numpy, chDB
    threads = cpu_split(threads_start, thread_cpu())
    if profiler is not None:
        profiler.stop()

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
            f"GROUP BY {keys})",
            settings=SLOW_QUERY,
        ).result_rows[0][0]
        events = client.query(
            f"SELECT sum(events) FROM {table} WHERE screen_name != ''", settings=SLOW_QUERY
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
        "threads_cpu_s": threads,
        "to_flushed_s": flushed - assigned,
        "to_committed_s": committed_at - assigned,
        "tables": rows,
    }


def summarise(
    events: int, runs: list[dict[str, Any]], raw: list[tuple[float, float]]
) -> dict[str, Any]:
    """Medians of one variant's runs, beside the raw reference of the same repetitions."""
    raw_rate = statistics.median(events / s for s, _ in raw)
    worker_rate = statistics.median(events / r["to_flushed_s"] for r in runs)
    committed_rate = statistics.median(events / r["to_committed_s"] for r in runs)
    kinds = {k for r in runs for k in r["threads_cpu_s"]}
    threads = {
        k: round(statistics.median(r["threads_cpu_s"].get(k, 0.0) for r in runs) / events * 1e6, 3)
        for k in kinds
    }
    tables = runs[-1]["tables"]
    return {
        "worker_events_per_s_to_flushed": round(worker_rate),
        "worker_events_per_s_to_committed": round(committed_rate),
        "worker_vs_raw": round(worker_rate / raw_rate, 3),
        "worker_cpu_us_per_event": round(
            statistics.median(r["cpu_s"] for r in runs) / events * 1e6, 3
        ),
        # Thread kinds of /proc/self/task: "python" = every Python thread (Faust,
        # decode, numpy, and the chDB calls made on them), the rest the engine's pools.
        "worker_cpu_us_per_event_by_thread": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fleet", choices=FLEET_KINDS, default="synthetic", help="workload (docs/fleets.md)"
    )
    parser.add_argument(
        "--flush-max-cells", type=int, default=None, help="HEATMAP_FLUSH_MAX_CELLS of the worker"
    )
    parser.add_argument(
        "--variants",
        default="default",
        help="comma-separated worker configurations run alternately (see the docstring)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy summary file")
    args = parser.parse_args()
    variants = [Variant.parse(v.strip()) for v in args.variants.split(",") if v.strip()]
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
        if args.flush_max_cells is not None:
            settings = replace(
                settings,
                worker=replace(settings.worker, flush_max_cells=args.flush_max_cells),
            )
        raw: list[tuple[float, float]] = []
        runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        for i in range(args.repeats):
            raw.append(raw_consume(bootstrap, topic, args.partitions))
            for variant in variants:
                last = i == args.repeats - 1 and variant is variants[0]
                profiler = Profiler(args.profile) if args.profile and last else None
                run = asyncio.run(
                    worker_run(settings, ends, f"chdb://{chdb_dir}", variant, profiler)
                )
                runs[variant.name].append(run)
                logger.info(
                    "run %d %s: raw %.0f ev/s, worker %.0f ev/s (flushed), %.0f ev/s "
                    "(committed), %.2f us CPU/event",
                    i + 1,
                    variant.name,
                    events / raw[-1][0],
                    events / run["to_flushed_s"],
                    events / run["to_committed_s"],
                    run["cpu_s"] / events * 1e6,
                )
        first = summarise(events, runs[variants[0].name], raw)
        report: dict[str, Any] = {
            "events": events,
            "fleet": args.fleet,
            "partitions": args.partitions,
            "repeats": args.repeats,
            "flush_max_cells": settings.worker.flush_max_cells,
            "load_average_1m": round(os.getloadavg()[0], 1),
            "raw_consume_events_per_s": round(statistics.median(events / s for s, _ in raw)),
            "raw_consume_cpu_us_per_event": round(
                statistics.median(c for _, c in raw) / events * 1e6, 3
            ),
            **first,
        }
        if len(variants) > 1:
            report["variants"] = {
                v.name: {
                    k: x
                    for k, x in summarise(events, runs[v.name], raw).items()
                    if k != "reduction"
                }
                for v in variants
            }
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
