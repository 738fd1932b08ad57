"""QueryHeatmapData ALL_USERS at grids 8, 64 and 512 through gRPC, beside its SQL alone.

    python -m bench.bench_query_grids --keep DIR [--calls 30] [--repeats 3]

``DIR`` is a chDB directory loaded by ``python -m bench.bench_query --keep DIR``
(the fleet's events in the cell tables). In this process: the query service
behind the real gRPC server on loopback; per repeat and grid, on the busiest
screen, ``--calls`` sequential calls from a gRPC client in its own process
(3 warm-up calls first), then the same cells statement alone in this process,
the way the service sends it (``--calls`` times). Besides latencies it
reports this process's CPU per call in both phases (user + system, chDB's
threads included): the service's own cost beyond the SQL is their
difference, which other jobs on a shared machine move much less than
latency. The answer is checked against the SQL's rows first. Prints one
line per grid and repeat, then medians over the repeats as a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap.clickhouse import connect, migrate
from heatmap.serve import serve
from heatmap.settings import ClickHouseSettings, Settings
from query_api import heatmap_query
from query_api.app import QueryService
from query_api.screenshots import FileScreenshotStore
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc

SECRET = "bench-secret-0123456789-0123456789-abcdef"
GRIDS = (8, 64, 512)
WARMUP = 3


def run_client(target: str, request: str, calls: int) -> int:
    """--client mode: ``calls`` timed QueryHeatmapData calls after the warm-up."""
    message = pb.QueryHeatmapDataRequest.FromString(base64.b64decode(request))
    metadata = (("authorization", "Bearer " + mint_token(SECRET, "bench", [VIEW_HEATMAPS])),)
    latencies = []
    with grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(ch)
        for i in range(WARMUP + calls):
            started = time.perf_counter()
            stub.QueryHeatmapData(message, metadata=metadata, timeout=120)
            if i >= WARMUP:
                latencies.append(time.perf_counter() - started)
    print(json.dumps(latencies))
    return 0


async def _grpc_calls(port: int, request: pb.QueryHeatmapDataRequest, calls: int) -> list[float]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.bench_query_grids",
        "--client",
        f"127.0.0.1:{port}",
        "--request",
        base64.b64encode(request.SerializeToString()).decode(),
        "--calls",
        str(calls),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"client process failed ({child.returncode})")
    latencies: list[float] = json.loads(out.decode().strip().splitlines()[-1])
    return latencies


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
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def stop_signal() -> None:
        await stop.wait()

    server = asyncio.create_task(
        serve(
            settings,
            [service],
            CollectorRegistry(),
            on_ready=ready.set_result,
            stop_signal=stop_signal,
        )
    )
    port = await asyncio.wait_for(ready, 60)
    rows: dict[int, list[dict[str, float]]] = {g: [] for g in GRIDS}
    try:
        for repeat in range(args.repeats):
            for grid in GRIDS:
                request = pb.QueryHeatmapDataRequest(screen_name=screen, grid_size=grid)
                plan = heatmap_query.plan(heatmap_query.parse_request(request), 200_000)
                answer = (await service.query(request)).message()
                sql_rows = client.query(plan.sql, parameters=plan.parameters).result_rows
                assert answer.total_count == sum(r[1] for r in sql_rows), grid
                assert len(answer.data_points) == len(sql_rows), grid
                calls = args.calls if grid < 512 else max(5, args.calls // 3)

                async def grpc_phase(
                    r: pb.QueryHeatmapDataRequest = request, n: int = calls
                ) -> list[float]:
                    return await _grpc_calls(port, r, n)

                async def sql_phase(p: heatmap_query.Plan = plan, n: int = calls) -> list[float]:
                    out = []
                    for i in range(WARMUP + n):
                        started = time.perf_counter()
                        await asyncio.to_thread(
                            client.query, p.sql, parameters=p.parameters, use_numpy=True
                        )
                        if i >= WARMUP:
                            out.append(time.perf_counter() - started)
                    return out

                via_grpc, grpc_cpu = await _cpu_per_call(grpc_phase, calls)
                sql, sql_cpu = await _cpu_per_call(sql_phase, calls)
                row = {
                    "points": len(answer.data_points),
                    "grpc_p50_ms": _ms(via_grpc, 50),
                    "grpc_p99_ms": _ms(via_grpc, 99),
                    "sql_p50_ms": _ms(sql, 50),
                    "sql_p99_ms": _ms(sql, 99),
                    "ratio_p50": round(_ms(via_grpc, 50) / _ms(sql, 50), 2),
                    "server_cpu_ms_per_call": round(grpc_cpu, 2),
                    "sql_cpu_ms_per_call": round(sql_cpu, 2),
                }
                rows[grid].append(row)
                print(f"repeat {repeat + 1} grid {grid:3d}: {json.dumps(row)}", flush=True)
    finally:
        stop.set()
        await server
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
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--request", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return run_client(args.client, args.request, args.calls)
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
    medians = asyncio.run(measure(settings, args))
    print(json.dumps({"medians": medians, "repeats": args.repeats, "calls": args.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
