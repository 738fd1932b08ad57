"""QueryHeatmapData ALL_USERS at grids 8, 64 and 512 through gRPC, beside its SQL alone.

    python -m bench.bench_query_grids --keep DIR [--calls 30] [--repeats 3] [--blocks 3]

``DIR`` is a chDB directory loaded by ``python -m bench.bench_query --keep DIR
[--fleet realistic]`` (the fleet's events in the cell tables). In this
process: the query service behind the real gRPC server on loopback; per
repeat and grid, on the busiest screen, ``--calls`` sequential calls from a
gRPC client in its own process (``bench_query``'s: 3 warm-up calls first),
and as many of the same cells statement alone in this process, the way the
service sends it. The two alternate in ``--blocks`` blocks (gRPC first, then
SQL first, ...), so that other jobs on a shared machine load both alike.
Besides latencies it reports this process's CPU per call in both phases
(user + system, chDB's threads included): the service's own cost beyond the
SQL is their difference, which other jobs move much less than latency. The
answer is checked against the SQL's rows first. Prints one line per grid and
repeat, then medians over the repeats and the load average as a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from bench.bench_query import SECRET, Shape, client_process
from heatmap.clickhouse import connect, migrate
from heatmap.settings import ClickHouseSettings, Settings
from query_api import heatmap_query
from query_api.app import QueryService
from query_api.screenshots import FileScreenshotStore
from schemas.heatmap.v1 import heatmap_pb2 as pb
from tests.grpc_support import serving

GRIDS = (8, 64, 512)
# bench_query.run_client warms up with the same number of calls.
WARMUP = 3


async def _cpu_per_call(
    fn: Callable[[], Awaitable[list[float]]], calls: int
) -> tuple[list[float], float]:
    started = time.process_time()
    latencies = await fn()
    return latencies, (time.process_time() - started) / (calls + WARMUP) * 1000


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(samples) * 1000, q)), 2)


async def measure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    client = connect(settings.clickhouse)
    screen = client.query(
        "SELECT screen_name FROM touch_cells_64 WHERE screen_name != '' GROUP BY screen_name "
        "ORDER BY sum(events) DESC LIMIT 1"
    ).result_rows[0][0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-query-grids-"))
    service = QueryService(settings, CollectorRegistry(), client, FileScreenshotStore(tmp))
    rows: dict[int, list[dict[str, float]]] = {g: [] for g in GRIDS}
    try:
        async with serving(settings, [service]) as port:
            for repeat in range(args.repeats):
                for grid in GRIDS:
                    request = pb.QueryHeatmapDataRequest(screen_name=screen, grid_size=grid)
                    plan = heatmap_query.plan(heatmap_query.parse_request(request), 200_000)
                    answer = (await service.query(request)).message()
                    sql_rows = client.query(plan.sql, parameters=plan.parameters).result_rows
                    assert answer.total_count == sum(r[1] for r in sql_rows), grid
                    assert len(answer.data_points) == len(sql_rows), grid
                    calls = args.calls if grid < 512 else max(5, args.calls // 3)
                    per_block = max(1, calls // args.blocks)
                    shape = Shape(f"grid{grid}", [request], raw_sql="", raw_params=[])

                    async def grpc_phase(s: Shape = shape, n: int = per_block) -> list[float]:
                        return await client_process(port, s, n, tmp)

                    async def sql_phase(
                        p: heatmap_query.Plan = plan, n: int = per_block
                    ) -> list[float]:
                        out = []
                        for i in range(WARMUP + n):
                            started = time.perf_counter()
                            await asyncio.to_thread(
                                client.query, p.sql, parameters=p.parameters, use_numpy=True
                            )
                            if i >= WARMUP:
                                out.append(time.perf_counter() - started)
                        return out

                    via_grpc: list[float] = []
                    sql: list[float] = []
                    cpu = {"grpc": 0.0, "sql": 0.0}
                    for block in range(args.blocks):
                        phases: list[tuple[str, Callable[[], Awaitable[list[float]]], list[float]]]
                        phases = [("grpc", grpc_phase, via_grpc), ("sql", sql_phase, sql)]
                        for name, phase, samples in phases[:: 1 if block % 2 == 0 else -1]:
                            latencies, cpu_ms = await _cpu_per_call(phase, per_block)
                            samples.extend(latencies)
                            cpu[name] += cpu_ms / args.blocks
                    row = {
                        "points": len(answer.data_points),
                        "grpc_p50_ms": _ms(via_grpc, 50),
                        "grpc_p99_ms": _ms(via_grpc, 99),
                        "sql_p50_ms": _ms(sql, 50),
                        "sql_p99_ms": _ms(sql, 99),
                        "ratio_p50": round(_ms(via_grpc, 50) / _ms(sql, 50), 2),
                        "server_cpu_ms_per_call": round(cpu["grpc"], 2),
                        "sql_cpu_ms_per_call": round(cpu["sql"], 2),
                    }
                    rows[grid].append(row)
                    print(f"repeat {repeat + 1} grid {grid:3d}: {json.dumps(row)}", flush=True)
    finally:
        client.close()
    return {
        str(g): {k: statistics.median(r[k] for r in rows[g]) for k in rows[g][0]} for g in GRIDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="chDB dir loaded by bench.bench_query --keep")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--blocks", type=int, default=3, help="gRPC and SQL blocks alternated per repeat and grid"
    )
    args = parser.parse_args(argv)
    if args.keep is None:
        parser.error("--keep DIR is required (load it with python -m bench.bench_query --keep DIR)")
    ch = ClickHouseSettings(url=f"chdb://{args.keep}", database="bench", max_execution_time_s=120)
    settings = Settings.from_env({"HEATMAP_JWT_SECRET": SECRET})
    settings = replace(
        settings,
        clickhouse=ch,
        server=replace(settings.server, grpc_host="127.0.0.1", grpc_port=0, metrics_port=0),
    )
    migrate(ch)
    load_before = os.getloadavg()
    medians = asyncio.run(measure(settings, args))
    print(
        json.dumps(
            {
                "medians": medians,
                "repeats": args.repeats,
                "calls": args.calls,
                "blocks": args.blocks,
                "load_average": {"before": load_before, "after": os.getloadavg()},
                "keep": str(args.keep),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
