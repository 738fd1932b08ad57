"""Memory and per-batch cost of the batch-id ledger at 10 M entries: bounded vs. load-everything.

``python -m bench.bench_ledger [--entries 10000000] [--repeat 3]``

A chDB store is filled with ``--entries`` ledger rows (3 partitions, within
the 7-day window). Then, each in a fresh process (chDB: one process per
store, and a clean RSS), alternating, ``--repeat`` times:

* ``reference``: the previous design, measured in the same run: every entry
  of the assigned partitions loaded into Python dicts at assignment, then
  dict look-ups per batch;
* ``bounded``: ``BatchLedger`` with the default settings
  (``HEATMAP_LEDGER_MEMORY_ENTRIES``, ``HEATMAP_LEDGER_FILTER_MB``): the
  Bloom filter computed by ClickHouse at assignment, exact recent ids,
  ClickHouse look-ups for filter hits.

Each replays the same stream of 50 chunks of 400 client batches: 97 % new
ids, 2.5 % retries of ids of the last few chunks, 0.5 % retries of ids
stored long ago (among the 10 M). Reported: the process's RSS growth from
loading the state (``VmRSS`` after minus before), the load time, and the
wall time per batch of the deduplication step (for ``bounded`` including
the ClickHouse look-ups and marking ids stored) with the process's CPU time
per batch beside it (all threads, so the engine's look-ups count), medians
over the repeats.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TOPIC = "touch"
PARTITIONS = (0, 1, 2)
CHUNKS, PER_CHUNK = 50, 400


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def held_bytes(mapping: Mapping[Any, int], sample: int = 100_000) -> int:
    """Python objects behind a {key tuple: offset} map (its table plus the sampled items, scaled).

    The process RSS also holds the chDB engine (caches, query memory), which
    a ClickHouse server keeps in its own process; this is the worker's part.
    """
    n = len(mapping)
    if not n:
        return sys.getsizeof(mapping)
    items = list(itertools.islice(mapping.items(), sample))
    per_item = sum(
        sys.getsizeof(k) + sum(sys.getsizeof(x) for x in k) + sys.getsizeof(v) for k, v in items
    ) / len(items)
    return sys.getsizeof(mapping) + int(per_item * n)


def stored_key(n: int) -> tuple[int, str, str]:
    return (n % 3, f"user-{n % 100_000}", f"b-{n}")


def stream(entries: int, seed: int = 7) -> list[list[tuple[tuple[int, str, str], int]]]:
    """Chunks of (key, offset): new ids, recent retries, retries of ids stored long ago."""
    rng = random.Random(seed)
    offset = entries
    recent: list[tuple[int, str, str]] = []
    chunks = []
    for c in range(CHUNKS):
        chunk = []
        for i in range(PER_CHUNK):
            roll = rng.random()
            if roll < 0.005:
                key = stored_key(rng.randrange(entries))
            elif roll < 0.03 and recent:
                key = rng.choice(recent[-2_000:])
            else:
                key = (rng.randrange(3), f"user-{rng.randrange(100_000)}", f"new-{c}-{i}")
                recent.append(key)
            chunk.append((key, offset))
            offset += 1
        chunks.append(chunk)
    return chunks


def fill(path: Path, entries: int) -> None:
    from heatmap.clickhouse import migrate
    from heatmap.settings import ClickHouseSettings

    settings = ClickHouseSettings(url=f"chdb://{path}", database="bench")
    migrate(settings)
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{path}", database="bench")
    client.command(
        "INSERT INTO ingest_batches SELECT {topic:String}, number % 3, "
        "concat('user-', toString(number % 100000)), concat('b-', toString(number)), "
        "number, now() FROM numbers({n:UInt64})",
        parameters={"topic": TOPIC, "n": entries},
    )
    client.command("OPTIMIZE TABLE ingest_batches FINAL")


def run_reference(
    client: Any, chunks: Sequence[Sequence[tuple[tuple[int, str, str], int]]]
) -> dict[str, float]:
    before = rss_bytes()
    started = time.perf_counter()
    result = client.query(
        "SELECT kafka_partition, user_id, batch_id, min(kafka_offset) FROM ingest_batches "
        "WHERE topic = {topic:String} AND kafka_partition IN {partitions:Array(UInt32)} "
        "AND received_at >= now() - INTERVAL 7 DAY GROUP BY kafka_partition, user_id, batch_id",
        parameters={"topic": TOPIC, "partitions": list(PARTITIONS)},
    )
    seen: dict[int, dict[tuple[str, str], int]] = {p: {} for p in PARTITIONS}
    for partition, user_id, batch_id, offset in result.result_rows:
        seen[int(partition)][(str(user_id), str(batch_id))] = int(offset)
    del result
    loaded_s = time.perf_counter() - started
    grown = rss_bytes() - before
    duplicates = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for chunk in chunks:
        for (partition, user_id, batch_id), offset in chunk:
            part = seen.setdefault(partition, {})
            first = part.get((user_id, batch_id))
            if first is None or offset < first:
                part[(user_id, batch_id)] = offset
            elif first != offset:
                duplicates += 1
    per_batch = (time.perf_counter() - started) / (CHUNKS * PER_CHUNK)
    cpu_per_batch = (time.process_time() - cpu_started) / (CHUNKS * PER_CHUNK)
    flat = {
        (p, u, b): o
        for p, part in seen.items()
        for (u, b), o in itertools.islice(part.items(), 100_000)
    }
    per_entry = held_bytes(flat) / max(len(flat), 1)
    return {
        "held_mb": per_entry * sum(len(v) for v in seen.values()) / 2**20,
        "entries": sum(len(v) for v in seen.values()),
        "rss_mb": grown / 2**20,
        "load_s": loaded_s,
        "us_per_batch": per_batch * 1e6,
        "cpu_us_per_batch": cpu_per_batch * 1e6,
        "duplicates": duplicates,
    }


def run_bounded(
    client: Any, chunks: Sequence[Sequence[tuple[tuple[int, str, str], int]]]
) -> dict[str, float]:
    from heatmap.settings import WorkerSettings
    from stream_workers.dedup import BatchLedger
    from stream_workers.sink import ClickHouseCellStore

    store = ClickHouseCellStore(client)
    worker = WorkerSettings()
    before = rss_bytes()
    started = time.perf_counter()
    ledger = BatchLedger(worker.ledger_memory_entries, worker.ledger_filter_mb << 20)
    store.load_ledger_filter(TOPIC, list(PARTITIONS), ledger.filter)
    for p in PARTITIONS:
        ledger.load(p)
    loaded_s = time.perf_counter() - started
    grown_at_load = rss_bytes() - before
    duplicates = looked_up = queries = 0
    look_up_s = 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    for chunk in chunks:
        unknown = ledger.to_look_up([k for k, _ in chunk])
        found: dict[tuple[int, str, str], int] = {}
        if unknown:
            asked = time.perf_counter()
            found = store.look_up_ledger(TOPIC, unknown)
            look_up_s += time.perf_counter() - asked
            queries += 1
        looked_up += len(unknown)
        recorded = []
        for key, offset in chunk:
            duplicate, record = ledger.admit(key, offset, found)
            duplicates += duplicate
            if record:
                recorded.append(key)
        ledger.stored(recorded)
    per_batch = (time.perf_counter() - started) / (CHUNKS * PER_CHUNK)
    # The whole process (all threads: the engine runs the look-ups in it).
    cpu_per_batch = (time.process_time() - cpu_started) / (CHUNKS * PER_CHUNK)
    held = ledger.filter.nbytes + held_bytes(ledger._recent) + held_bytes(ledger._pending)
    return {
        "held_mb": held / 2**20,
        "entries": len(ledger),
        "rss_mb": grown_at_load / 2**20,
        "rss_after_stream_mb": (rss_bytes() - before) / 2**20,
        "load_s": loaded_s,
        "us_per_batch": per_batch * 1e6,
        "cpu_us_per_batch": cpu_per_batch * 1e6,
        "duplicates": duplicates,
        "looked_up": looked_up,
        "queries": queries,
        "ms_per_query": look_up_s / max(queries, 1) * 1e3,
        "us_per_batch_in_memory": (per_batch - look_up_s / (CHUNKS * PER_CHUNK)) * 1e6,
    }


def child(variant: str, path: Path, entries: int) -> None:
    import clickhouse_connect

    chunks = stream(entries)
    client = clickhouse_connect.get_client(dsn=f"chdb://{path}", database="bench")
    client.query("SELECT count() FROM ingest_batches")  # the engine is up before the baseline
    run = run_reference if variant == "reference" else run_bounded
    print(json.dumps(run(client, chunks)))


def spawn(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_ledger", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=("reference", "bounded"))
    parser.add_argument("--fill", action="store_true")
    parser.add_argument("--path", type=Path)
    args = parser.parse_args(argv)
    if args.fill:
        fill(args.path, args.entries)
        return 0
    if args.child:
        child(args.child, args.path, args.entries)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        path = Path(tmp) / "store"
        started = time.perf_counter()
        spawn("--fill", "--path", str(path), "--entries", str(args.entries))
        print(f"filled {args.entries:,} ledger rows in {time.perf_counter() - started:.0f} s")
        runs: dict[str, list[dict[str, float]]] = {"reference": [], "bounded": []}
        for _ in range(args.repeat):
            for variant in runs:
                out = spawn("--child", variant, "--path", str(path), "--entries", str(args.entries))
                runs[variant].append(json.loads(out))
                print(variant, out, flush=True)
    print(f"\nmedians of {args.repeat}, {CHUNKS * PER_CHUNK:,} batches per run:")
    print(
        "| ledger | ids held exactly | held by the ledger (MB) | process RSS growth (MB) "
        "| load at assignment (s) | µs / batch | µs CPU / batch (process) |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(
            f"| {variant} | {med['entries']:,.0f} | {med['held_mb']:,.0f} | {med['rss_mb']:,.0f} "
            f"| {med['load_s']:.1f} "
            f"| {med['us_per_batch']:.1f} | {med['cpu_us_per_batch']:.1f} |"
        )
        if variant == "bounded":
            print(
                f"(bounded: RSS growth after the stream {med['rss_after_stream_mb']:.0f} MB; "
                f"{med['looked_up']:.0f} ids looked up in {med['queries']:.0f} ClickHouse "
                f"queries of {med['ms_per_query']:.1f} ms; without them "
                f"{med['us_per_batch_in_memory']:.1f} µs / batch)"
            )
    dups = {v: [r["duplicates"] for r in rs] for v, rs in runs.items()}
    print(f"duplicates found (must be equal): {dups}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
