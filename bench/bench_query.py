"""QueryHeatmapData latency on pre-aggregated cells vs the same question on raw events.

    python -m bench.bench_query [--events 50000000] [--calls 100] [--raw-calls 30]
                                [--fleet synthetic|realistic] [--codecs schema|none]
                                [--compare-codecs]

In its own process with its own temporary chDB path:

1. The ``--fleet`` (``heatmap_devtools.fleet``, docs/fleets.md: ``synthetic``, Zipf
   screens, clustered touches, a day with a day/night cycle, 100k devices; or
   ``realistic``, power-law users in sessions of 500 events) generates ``--events`` events
   in numpy chunks of 2M, loaded as Arrow into ``raw_touch_events``: one row
   per event, the way PostHog stores heatmaps (its ``sharded_heatmaps`` is
   ORDER BY (type, team_id, toDate(timestamp), current_url, ...); here
   ORDER BY (event_type, screen_name, toDate(timestamp)), same idea without
   the team).
2. The three cell tables of ``schemas/clickhouse/001_touch_cells.sql`` (with
   the codecs of migration 020, or without them: ``--codecs none``) are
   filled from each chunk with INSERT ... SELECT ... GROUP BY (as worker
   flushes would: each flush's rows are aggregated, merges sum the rest).
   All four tables are then OPTIMIZEd (the steady state of data older than
   a few minutes). Rows and bytes per event per table (on disk, compressed,
   uncompressed; per projection and per column, from system.parts,
   system.projection_parts and system.columns) are printed beside the raw
   table's.
3. QueryService runs behind the real gRPC server (heatmap.serve) on
   loopback in this process (which owns the chDB path); each shape is timed
   end to end by a gRPC client in a separate process (``--calls`` sequential
   calls after 3 warm-up calls), then the same SQL the service runs and the
   equivalent SQL on the raw table are timed in this process (``--raw-calls``
   calls each). Answers are checked equal first.
4. The per-(screen, cell) projections of migration 003 are part of the
   schema; ClickHouse uses them for the whole-range shapes by itself.
5. ``--compare-codecs``: copies of the cell tables without migration 020's
   codecs (``--codecs none``), filled with the same rows and OPTIMIZEd alike;
   sizes of both, and each shape's statements run on both interleaved, call
   after call (wall and CPU time): both codec sets on the same data in one run.

Prints a table and a JSON line: p50/p99 per shape, the raw/cells ratio, and
rows and bytes on disk per table (system.parts). Target: ALL_USERS at grid 64
p99 < 50 ms and >= 20x faster than the raw-table query. ALL_USERS shapes are
timed again, right after, with the same requests asking for unique users
(``unique_users``; ``--unique-users-calls`` of them), beside the unique-users
statement alone in SQL.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap.clickhouse import connect, migrate
from heatmap.settings import ClickHouseSettings, Settings
from heatmap_devtools.fleet import FLEET_KINDS, Fleet, FleetSpec
from query_api import heatmap_query
from query_api.app import QueryService
from query_api.screenshots import FileScreenshotStore
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.grpc_support import serving

CHUNK = 2_000_000
SECRET = "bench-secret-0123456789-0123456789-abcdef"

RAW_DDL = """
CREATE TABLE raw_touch_events
(
    event_type  UInt8,
    screen_name LowCardinality(String),
    campaign_id LowCardinality(String),
    user_id     String,
    timestamp   DateTime64(3, 'UTC'),
    x           Float32,
    y           Float32
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (event_type, screen_name, toDate(timestamp))
"""

_CELL = "least(toUInt16(floor({v} * {g})), {g} - 1)"

CELL_TABLES = (
    ("touch_cells_by_user", 512, True),
    ("touch_cells", 512, False),
    ("touch_cells_64", 64, False),
)


def _cells_sql(table: str, grid: int, with_user: bool) -> str:
    user = "user_id, " if with_user else ""
    return f"""
INSERT INTO {table}
SELECT screen_name, {user}campaign_id, event_type, toStartOfHour(timestamp) AS hour,
       {_CELL.format(v="x", g=grid)} AS cx, {_CELL.format(v="y", g=grid)} AS cy,
       count() AS events, toInt64(0) AS source_offset
FROM raw_chunk
GROUP BY screen_name, {user}campaign_id, event_type, hour, cx, cy
"""


def load(client: Client, events: int, spec: FleetSpec) -> dict[str, float]:
    fleet = Fleet(spec)
    client.command(RAW_DDL)
    # A chunk is staged once, aggregated into the three tables (as a worker
    # flush would be: each insert's rows aggregated, merges sum the rest),
    # then appended to the raw table: every event is read twice, not once
    # per hour and table.
    client.command(
        "CREATE TABLE raw_chunk AS raw_touch_events ENGINE = Memory",
        settings={"max_execution_time": 0},
    )
    users = pa.array([fleet.user_id(i) for i in range(spec.users)])
    screens = pa.array(fleet.screen_names)
    campaigns = pa.array(fleet.campaign_ids)
    timings = {"generate_s": 0.0, "load_raw_s": 0.0, "aggregate_s": 0.0}
    done = 0
    while done < events:
        n = min(CHUNK, events - done)
        started = time.perf_counter()
        ev = fleet.events(n)
        table = pa.table(
            {
                "event_type": ev.event_type,
                "screen_name": pa.DictionaryArray.from_arrays(ev.screen.astype(np.int32), screens),
                "campaign_id": pa.DictionaryArray.from_arrays(
                    ev.campaign.astype(np.int32), campaigns
                ),
                "user_id": pa.DictionaryArray.from_arrays(ev.user.astype(np.int32), users),
                "timestamp": pa.array(ev.timestamp_ms, type=pa.timestamp("ms", tz="UTC")),
                "x": ev.x,
                "y": ev.y,
            }
        )
        timings["generate_s"] += time.perf_counter() - started
        started = time.perf_counter()
        client.insert_arrow("raw_chunk", table)
        client.command(
            "INSERT INTO raw_touch_events SELECT * FROM raw_chunk",
            settings={"max_execution_time": 0},
        )
        timings["load_raw_s"] += time.perf_counter() - started
        started = time.perf_counter()
        for name, grid, with_user in CELL_TABLES:
            client.command(_cells_sql(name, grid, with_user), settings={"max_execution_time": 0})
        timings["aggregate_s"] += time.perf_counter() - started
        client.command("TRUNCATE TABLE raw_chunk")
        done += n
        print(f"  events {done:,}/{events:,} ({sum(timings.values()):.0f} s)", flush=True)
    client.command("DROP TABLE raw_chunk")
    started = time.perf_counter()
    # The steady state of data older than a few minutes: merged.
    for name in ("touch_cells_64", "touch_cells", "touch_cells_by_user", "raw_touch_events"):
        client.command(f"OPTIMIZE TABLE {name} FINAL", settings={"max_execution_time": 0})
    timings["optimize_s"] = time.perf_counter() - started
    return timings


def wait_for_merges(client: Client, timeout_s: float = 300) -> None:
    """Measure a settled store: no background merge competing for the two cores."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not client.query("SELECT count() FROM system.merges").result_rows[0][0]:
            return
        time.sleep(1)


def remove_codecs(client: Client, prefix: str = "") -> None:
    """The reference store: the cell tables as before migration 020 (default LZ4)."""
    for cell_table, _, _ in CELL_TABLES:
        table = prefix + cell_table
        columns = client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() "
            "AND table = {t:String} AND compression_codec != ''",
            parameters={"t": table},
        ).result_rows
        for (name,) in columns:
            client.command(f"ALTER TABLE {table} MODIFY COLUMN {name} REMOVE CODEC")
        client.command(f"ALTER TABLE {table} RESET SETTING default_compression_codec")


def disk(client: Client) -> dict[str, dict[str, Any]]:
    """Rows and bytes per table (system.parts; bytes_on_disk includes projections),
    its projections (system.projection_parts) and columns (system.columns)."""
    db = "database = currentDatabase()"
    out: dict[str, dict[str, Any]] = {
        r[0]: {
            "rows": int(r[1]),
            "bytes_on_disk": int(r[2]),
            "compressed": int(r[3]),
            "uncompressed": int(r[4]),
            "parts": int(r[5]),
            "projections": {},
            "columns": {},
        }
        for r in client.query(
            "SELECT table, sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), "
            f"sum(data_uncompressed_bytes), count() FROM system.parts WHERE {db} AND active "
            "GROUP BY table"
        ).result_rows
    }
    for table, name, rows, on_disk, uncompressed in client.query(
        "SELECT table, name, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) "
        f"FROM system.projection_parts WHERE {db} AND active GROUP BY table, name"
    ).result_rows:
        out[table]["projections"][name] = {
            "rows": int(rows),
            "bytes_on_disk": int(on_disk),
            "uncompressed": int(uncompressed),
        }
    for table, name, codec, compressed, uncompressed in client.query(
        "SELECT table, name, compression_codec, data_compressed_bytes, data_uncompressed_bytes "
        f"FROM system.columns WHERE {db} AND data_uncompressed_bytes > 0 ORDER BY table, position"
    ).result_rows:
        if table in out:
            out[table]["columns"][name] = {
                "codec": codec or "default (LZ4)",
                "compressed": int(compressed),
                "uncompressed": int(uncompressed),
            }
    return out


def cell_set_bound(client: Client, events: int) -> dict[str, float]:
    """The information in the 512-grid tables' cell columns, in bytes per event,
    if nothing is known about where touches fall: a key run (screen, [user,]
    campaign, type, hour) holding k distinct cells of the 512 x 512 is one of
    C(262144, k) subsets, log2 C(262144, k) bits; summed over the runs. Only
    an encoding that models the clusters of touches could go below it; the
    column codecs (one column at a time, Delta/T64 + ZSTD) stay above it."""
    out = {}
    for table, key in (
        ("touch_cells_by_user", "screen_name, user_id, campaign_id, event_type, hour"),
        ("touch_cells", "screen_name, campaign_id, event_type, hour"),
    ):
        bits = client.query(
            "SELECT sum((lgamma(262145) - lgamma(k + 1) - lgamma(262145 - k)) / ln(2)) "
            f"FROM (SELECT count() AS k FROM {table} WHERE screen_name != '' GROUP BY {key})",
            settings={"max_execution_time": 0},
        ).result_rows[0][0]
        out[table] = round(float(bits or 0) / 8 / max(events, 1), 4)
    return out


def print_disk(sizes: dict[str, dict[str, Any]], events: int) -> None:
    """Per event: rows, bytes on disk, compressed and uncompressed, beside the raw table."""
    print(
        f"  {'table':22s} {'rows/ev':>8s} {'disk B/ev':>10s} {'compr B/ev':>11s} "
        f"{'uncompr B/ev':>13s} {'MB':>8s} parts"
    )
    cells = 0
    for table in ("raw_touch_events", *(t for t, _, _ in CELL_TABLES)):
        info = sizes.get(table)
        if info is None:
            continue
        if table != "raw_touch_events":
            cells += info["bytes_on_disk"]
        print(
            f"  {table:22s} {info['rows'] / events:8.3f} {info['bytes_on_disk'] / events:10.2f} "
            f"{info['compressed'] / events:11.2f} {info['uncompressed'] / events:13.2f} "
            f"{info['bytes_on_disk'] / 1e6:8.1f} {info['parts']}"
        )
        for name, p in info["projections"].items():
            print(
                f"    projection {name:24s} rows/ev {p['rows'] / events:.3f}"
                f"  disk B/ev {p['bytes_on_disk'] / events:.2f}"
            )
        for name, c in info["columns"].items():
            print(
                f"    {name:15s} {c['compressed'] / events:6.3f} B/ev"
                f" (uncompressed {c['uncompressed'] / events:6.2f})  {c['codec']}"
            )
    raw = sizes.get("raw_touch_events", {}).get("bytes_on_disk", 0)
    if raw and cells:
        print(
            f"  three cell tables {cells / events:.2f} B/ev = {cells / 1e6:.1f} MB; "
            f"raw {raw / events:.2f} B/ev = {raw / 1e6:.1f} MB: {raw / cells:.2f}x smaller"
        )


@dataclass(frozen=True)
class Shape:
    name: str
    requests: list[pb.QueryHeatmapDataRequest]
    raw_sql: str
    raw_params: list[dict[str, Any]]


def _raw(grid: int, where: str, per_user: bool = False) -> str:
    cells = f"{_CELL.format(v='x', g=grid)} AS gx, {_CELL.format(v='y', g=grid)} AS gy"
    if per_user:
        return (
            f"SELECT user_id, {cells}, count() AS n FROM raw_touch_events "
            f"WHERE {where} GROUP BY user_id, gx, gy"
        )
    return f"SELECT {cells}, count() AS n FROM raw_touch_events WHERE {where} GROUP BY gx, gy"


def shapes(client: Client, spec: FleetSpec) -> list[Shape]:
    top = [
        r[0]
        for r in client.query(
            "SELECT screen_name FROM touch_cells_64 WHERE screen_name != '' GROUP BY screen_name "
            "ORDER BY sum(events) DESC LIMIT 3"
        ).result_rows
    ]
    busy_user = client.query(
        "SELECT user_id FROM touch_cells_by_user WHERE screen_name = {s:String} "
        "GROUP BY user_id ORDER BY sum(events) DESC LIMIT 1",
        parameters={"s": top[0]},
    ).result_rows[0][0]
    start = spec.first_hour + dt.timedelta(hours=17)
    end = start + dt.timedelta(hours=3)
    window = pb.QueryHeatmapDataRequest()
    window.start_time.FromDatetime(start)
    window.end_time.FromDatetime(end)
    screen_eq = "screen_name = {s:String}"
    return [
        Shape(
            "all_users_g64_top1",
            [pb.QueryHeatmapDataRequest(screen_name=top[0], grid_size=64)],
            _raw(64, screen_eq),
            [{"s": top[0]}],
        ),
        Shape(
            "all_users_g64_top3",
            [pb.QueryHeatmapDataRequest(screen_name=s, grid_size=64) for s in top],
            _raw(64, screen_eq),
            [{"s": s} for s in top],
        ),
        Shape(
            "all_users_g64_3h_window",
            [
                pb.QueryHeatmapDataRequest(
                    screen_name=s,
                    grid_size=64,
                    start_time=window.start_time,
                    end_time=window.end_time,
                )
                for s in top
            ],
            _raw(
                64,
                screen_eq + " AND timestamp >= {a:DateTime64(3, 'UTC')}"
                " AND timestamp < {b:DateTime64(3, 'UTC')}",
            ),
            [{"s": s, "a": start, "b": end} for s in top],
        ),
        Shape(
            "all_users_g64_campaign_tap",
            [
                pb.QueryHeatmapDataRequest(
                    screen_name=s, grid_size=64, campaign_id="campaign-1", event_types=[pb.TAP]
                )
                for s in top
            ],
            _raw(64, screen_eq + " AND campaign_id = 'campaign-1' AND event_type = 1"),
            [{"s": s} for s in top],
        ),
        Shape(
            "per_user_g64_one_user",
            [
                pb.QueryHeatmapDataRequest(
                    screen_name=top[0], grid_size=64, mode=pb.PER_USER, user_id=busy_user
                )
            ],
            _raw(64, screen_eq + " AND user_id = {u:String}", per_user=True),
            [{"s": top[0], "u": busy_user}],
        ),
        Shape(
            "all_users_g512_top1",
            [pb.QueryHeatmapDataRequest(screen_name=top[0], grid_size=512)],
            _raw(512, screen_eq),
            [{"s": top[0]}],
        ),
    ]


def pct(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "calls": len(samples),
    }


REFERENCE = "lz4_"  # prefix of the copies without codecs in --compare-codecs
_CELL_TABLE = re.compile(r"\b(touch_cells_by_user|touch_cells_64|touch_cells)\b")


def interleaved(client: Client, spec: FleetSpec, calls: int, users_calls: int) -> dict[str, Any]:
    """Each shape's statements on the tables with codecs and on their copies
    without, call after call (the order swapped every call), wall and CPU time
    (this process: chDB's threads included) per statement."""
    out: dict[str, Any] = {}
    for shape in shapes(client, spec):
        requests = [heatmap_query.parse_request(r) for r in shape.requests]
        kinds = [("cells_sql", [heatmap_query.plan(r, 200_000) for r in requests], calls)]
        if shape.requests[0].mode != pb.PER_USER:
            kinds.append(
                (
                    "unique_users_sql",
                    [heatmap_query.plan_unique_users(r) for r in requests],
                    users_calls,
                )
            )
        for kind, plans, n in kinds:
            samples: dict[str, dict[str, list[float]]] = {
                side: {"wall": [], "cpu": []} for side in ("codecs", "lz4")
            }
            for i in range(n + 2):  # two warm-up rounds
                plan = plans[i % len(plans)]
                sides = [
                    ("codecs", plan.sql),
                    ("lz4", _CELL_TABLE.sub(REFERENCE + r"\1", plan.sql)),
                ]
                for side, sql in sides if i % 2 else sides[::-1]:
                    wall, cpu = time.perf_counter(), time.process_time()
                    client.query(sql, parameters=plan.parameters)
                    if i >= 2:
                        samples[side]["wall"].append(time.perf_counter() - wall)
                        samples[side]["cpu"].append(time.process_time() - cpu)
            result = {
                side: {"wall": pct(v["wall"]), "cpu": pct(v["cpu"])} for side, v in samples.items()
            }
            out[f"{shape.name}/{kind}"] = result
            c, r = result["codecs"], result["lz4"]
            print(
                f"  {shape.name:28s} {kind:17s} CPU p50 {c['cpu']['p50_ms']:8.2f} vs "
                f"{r['cpu']['p50_ms']:8.2f} ms | wall p50 {c['wall']['p50_ms']:8.2f} vs "
                f"{r['wall']['p50_ms']:8.2f}  p99 {c['wall']['p99_ms']:8.2f} vs "
                f"{r['wall']['p99_ms']:8.2f} ms (codecs vs LZ4)",
                flush=True,
            )
    return out


def compare_codecs(client: Client, spec: FleetSpec, args: argparse.Namespace) -> dict[str, Any]:
    """Copies of the cell tables without migration 020's codecs, filled from
    the same rows and merged alike, beside the tables: sizes of both and the
    same statements interleaved on both, in one run."""
    started = time.perf_counter()
    for table, _, _ in CELL_TABLES:
        client.command(f"CREATE TABLE {REFERENCE}{table} AS {table}")
    remove_codecs(client, REFERENCE)
    for table, _, _ in CELL_TABLES:
        client.command(
            f"INSERT INTO {REFERENCE}{table} SELECT * FROM {table}",
            settings={"max_execution_time": 0},
        )
        client.command(
            f"OPTIMIZE TABLE {REFERENCE}{table} FINAL", settings={"max_execution_time": 0}
        )
    wait_for_merges(client)
    sizes = disk(client)
    events = int(client.query("SELECT count() FROM raw_touch_events").result_rows[0][0])
    print(f"codecs vs none, same rows ({time.perf_counter() - started:.0f} s to copy):")
    total = {"codecs": 0, "lz4": 0}
    for table, _, _ in CELL_TABLES:
        with_c, without = sizes[table], sizes[REFERENCE + table]
        total["codecs"] += with_c["bytes_on_disk"]
        total["lz4"] += without["bytes_on_disk"]
        print(
            f"  {table:22s} disk B/ev {with_c['bytes_on_disk'] / events:6.2f} with codecs, "
            f"{without['bytes_on_disk'] / events:6.2f} without "
            f"({without['bytes_on_disk'] / with_c['bytes_on_disk']:.2f}x)"
        )
    raw = sizes["raw_touch_events"]["bytes_on_disk"]
    print(
        f"  three cell tables {total['codecs'] / events:.2f} B/ev with codecs "
        f"({raw / total['codecs']:.2f}x smaller than raw), {total['lz4'] / events:.2f} without "
        f"({raw / total['lz4']:.2f}x)",
        flush=True,
    )
    print("the same statements, interleaved:", flush=True)
    timings = interleaved(client, spec, args.raw_calls, args.codec_users_calls)
    for table, _, _ in CELL_TABLES:
        client.command(f"DROP TABLE {REFERENCE}{table}")
    return {"tables": {k: v for k, v in sizes.items() if k.startswith(REFERENCE)}, "sql": timings}


async def timed(fn: Callable[[], Awaitable[Any]], calls: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - started)
    return out


async def client_process(port: int, shape: Shape, calls: int, tmp: Path) -> list[float]:
    """Latencies seen by a gRPC client in its own process (as a dashboard backend would be)."""
    path = tmp / f"{shape.name}.requests"
    path.write_text(
        json.dumps([base64.b64encode(r.SerializeToString()).decode() for r in shape.requests])
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_query",
        "--client",
        f"127.0.0.1:{port}",
        "--requests",
        str(path),
        "--calls",
        str(calls),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"client process failed ({child.returncode})")
    latencies: list[float] = json.loads(out.decode().strip().splitlines()[-1])
    return latencies


def run_client(target: str, requests_path: Path, calls: int) -> int:
    """--client mode: time QueryHeatmapData calls (cycling the requests), print the latencies."""
    requests = [
        pb.QueryHeatmapDataRequest.FromString(base64.b64decode(r))
        for r in json.loads(requests_path.read_text())
    ]
    metadata = (("authorization", "Bearer " + mint_token(SECRET, "bench", [VIEW_HEATMAPS])),)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    latencies = []
    with grpc.insecure_channel(target, options=options) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for i in range(3 + calls):
            started = time.perf_counter()
            stub.QueryHeatmapData(requests[i % len(requests)], metadata=metadata, timeout=120)
            if i >= 3:  # warm-up first
                latencies.append(time.perf_counter() - started)
    print(json.dumps(latencies))
    return 0


async def measure(
    settings: Settings, client: Client, tmp: Path, args: argparse.Namespace, spec: FleetSpec
) -> dict[str, Any]:
    registry = CollectorRegistry()
    service = QueryService(settings, registry, client, FileScreenshotStore(tmp / "shots"))
    metadata = (("authorization", "Bearer " + mint_token(SECRET, "bench", [VIEW_HEATMAPS])),)
    results: dict[str, Any] = {}
    async with (
        serving(settings, [service], registry) as port,
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel,
    ):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for shape in shapes(client, spec):
            # Same answer both ways first.
            for request, params in zip(shape.requests, shape.raw_params, strict=True):
                reply = await stub.QueryHeatmapData(request, metadata=metadata, timeout=120)
                raw_rows = client.query(shape.raw_sql, parameters=params).result_rows
                assert reply.total_count == sum(r[-1] for r in raw_rows), shape.name
                assert len(reply.data_points) == len(raw_rows), shape.name
            turn = {"i": 0}

            async def raw_call(shape: Shape = shape, turn: dict[str, int] = turn) -> None:
                params = shape.raw_params[turn["i"] % len(shape.raw_params)]
                turn["i"] += 1
                await asyncio.to_thread(client.query, shape.raw_sql, parameters=params)

            async def cells_sql_call(shape: Shape = shape, turn: dict[str, int] = turn) -> None:
                request = shape.requests[turn["i"] % len(shape.requests)]
                turn["i"] += 1
                plan = heatmap_query.plan(heatmap_query.parse_request(request), 200_000)
                await asyncio.to_thread(client.query, plan.sql, parameters=plan.parameters)

            async def users_sql_call(shape: Shape = shape, turn: dict[str, int] = turn) -> None:
                request = shape.requests[turn["i"] % len(shape.requests)]
                turn["i"] += 1
                plan = heatmap_query.plan_unique_users(heatmap_query.parse_request(request))
                await asyncio.to_thread(client.query, plan.sql, parameters=plan.parameters)

            calls = args.calls if "g512" not in shape.name else max(5, args.calls // 10)
            users_calls = args.unique_users_calls or calls
            all_users = shape.requests[0].mode != pb.PER_USER
            with_users: dict[str, float] = {}
            users_sql: dict[str, float] = {}
            cells = pct(await client_process(port, shape, calls, tmp))
            if all_users:  # the same requests asking for unique users, right after
                asking = []
                for request in shape.requests:
                    copy = pb.QueryHeatmapDataRequest()
                    copy.CopyFrom(request)
                    copy.unique_users = True
                    asking.append(copy)
                asked = replace(shape, name=shape.name + "_unique_users", requests=asking)
                answer = await stub.QueryHeatmapData(asking[0], metadata=metadata, timeout=600)
                assert answer.unique_users > 0, shape.name
                with_users = pct(await client_process(port, asked, users_calls, tmp))
                users_sql = pct(await timed(users_sql_call, min(args.raw_calls, users_calls)))
            cells_sql = pct(await timed(cells_sql_call, args.raw_calls))
            raw = pct(await timed(raw_call, args.raw_calls, warmup=1))
            results[shape.name] = {
                "cells_grpc": cells,
                "cells_grpc_with_unique_users": with_users,
                "unique_users_sql": users_sql,
                "cells_sql": cells_sql,
                "raw_sql": raw,
                "ratio_sql_p50": round(raw["p50_ms"] / cells_sql["p50_ms"], 1),
                "ratio_p50": round(raw["p50_ms"] / cells["p50_ms"], 1),
                "ratio_p99": round(raw["p99_ms"] / cells["p99_ms"], 1),
                "points": len(reply.data_points),
            }
            print(
                f"  {shape.name:28s} cells gRPC p50 {cells['p50_ms']:8.2f} ms"
                f"  p99 {cells['p99_ms']:8.2f} ms | cells SQL p50 {cells_sql['p50_ms']:7.2f} ms"
                f" | raw SQL p50 {raw['p50_ms']:8.2f} ms"
                f"  p99 {raw['p99_ms']:8.2f} ms | x{results[shape.name]['ratio_p50']} (p50)"
                f"  points {len(reply.data_points)}",
                flush=True,
            )
            if all_users:
                print(
                    f"  {'':28s} with unique users: gRPC p50 {with_users['p50_ms']:8.2f} ms"
                    f"  p99 {with_users['p99_ms']:8.2f} ms | unique-users SQL alone p50 "
                    f"{users_sql['p50_ms']:7.2f} ms  p99 {users_sql['p99_ms']:7.2f} ms",
                    flush=True,
                )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--raw-calls", type=int, default=30)
    parser.add_argument(
        "--unique-users-calls",
        type=int,
        default=0,
        help="calls per shape asking for unique users (default: as --calls; they are slow)",
    )
    parser.add_argument(
        "--fleet", choices=FLEET_KINDS, default="synthetic", help="workload (docs/fleets.md)"
    )
    parser.add_argument(
        "--codecs",
        choices=("schema", "none"),
        default="schema",
        help="none: the cell tables without migration 020's codecs (the reference)",
    )
    parser.add_argument(
        "--compare-codecs",
        action="store_true",
        help="after the measurements, copies of the cell tables without codecs: sizes of "
        "both, and the statements interleaved on both (same data, same run)",
    )
    parser.add_argument(
        "--codec-users-calls", type=int, default=5, help="unique-users SQL calls per shape there"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="chDB dir to use and keep; if it already holds a loaded run, measure that again",
    )
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return run_client(args.client, args.requests, args.calls)
    spec = FleetSpec(kind=args.fleet)
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp_dir:
        tmp = Path(tmp_dir)
        chdb_dir = args.keep or tmp / "chdb"
        ch = ClickHouseSettings(url=f"chdb://{chdb_dir}", database="bench", max_execution_time_s=60)
        settings = Settings.from_env({"HEATMAP_JWT_SECRET": SECRET})
        settings = replace(
            settings,
            clickhouse=ch,
            server=replace(settings.server, grpc_host="127.0.0.1", grpc_port=0, metrics_port=0),
        )
        migrate(ch)
        client = connect(ch)
        try:
            if args.codecs == "none":
                remove_codecs(client)
            loaded = client.query(
                "SELECT sum(rows) FROM system.parts WHERE database = currentDatabase() "
                "AND table = 'raw_touch_events' AND active"
            ).result_rows[0][0]
            if loaded:
                print(f"reusing {int(loaded):,} events already loaded in {chdb_dir}", flush=True)
                timings: dict[str, float] = {}
            else:
                print(f"loading {args.events:,} fleet events into {chdb_dir}", flush=True)
                timings = load(client, args.events, spec)
            wait_for_merges(client)
            sizes = disk(client)
            loaded_events = int(
                client.query("SELECT count() FROM raw_touch_events").result_rows[0][0]
            )
            print_disk(sizes, loaded_events)
            bound = cell_set_bound(client, loaded_events)
            print(
                "  cell sets (cell_x + cell_y) as uniform subsets, the codecs' floor: "
                + ", ".join(f"{t} {b:.3f} B/ev" for t, b in bound.items()),
                flush=True,
            )
            print("measuring (gRPC QueryHeatmapData on cells vs SQL on raw events)", flush=True)
            results = asyncio.run(measure(settings, client, tmp, args, spec))
            codecs = compare_codecs(client, spec, args) if args.compare_codecs else {}
        finally:
            client.close()
    print(
        json.dumps(
            {
                "load_average": os.getloadavg(),
                "events": args.events,
                "fleet": args.fleet,
                "codecs": args.codecs,
                "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "tables": sizes,
                "cell_set_bound_bytes_per_event": bound,
                "shapes": results,
                "codec_comparison": codecs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
