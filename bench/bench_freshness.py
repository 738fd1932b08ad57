"""Freshness in ``heatmap dev``: time from an acknowledged ingest to the event being queryable,
while ``heatmap loadgen`` offers a steady load (default 100,000 events/s) in another process.

    python -m bench.bench_freshness [--rate 100000] [--duration 40]

A probe sends one event to its own screen, then polls QueryHeatmapData every
20 ms until it is counted; repeated for the whole load window. Reports the
probe latencies (p50/p99/max) beside the load actually accepted, and the CPU
per accepted event of each process over the load window: ``heatmap dev`` (the
gateway, worker and query service with the in-process engine), each of its
child processes (the Kafka broker's JVM, the S3 server) and loadgen.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from bench.bench_gateway import cpu_seconds
from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc


def probe_once(stub: heatmap_pb2_grpc.HeatmapServiceStub, secret: str, screen: str) -> float:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    device = (("authorization", "Bearer " + mint_token(secret, "probe-device", [])),)
    viewer = (("authorization", "Bearer " + mint_token(secret, "probe", [VIEW_HEATMAPS])),)
    request = heatmap_pb2.IngestTouchEventsRequest(
        events=[
            heatmap_pb2.TouchEvent(
                screen_name=screen, x=0.5, y=0.5, event_type=heatmap_pb2.TAP, timestamp=stamp
            )
        ]
    )
    stub.IngestTouchEvents(request, metadata=device, timeout=10)
    acked = time.perf_counter()
    query = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, grid_size=8)
    while time.perf_counter() - acked < 30:
        if stub.QueryHeatmapData(query, metadata=viewer, timeout=10).total_count >= 1:
            return time.perf_counter() - acked
        time.sleep(0.02)
    return float("inf")


def process_tree(pid: int) -> dict[int, str]:
    """``pid`` and its descendants, each with its command name (``name-pid`` where
    two share one)."""
    out: dict[int, str] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            name = Path(f"/proc/{current}/comm").read_text().strip()
            out[current] = name if name not in out.values() else f"{name}-{current}"
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=100_000)
    parser.add_argument("--duration", type=float, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="freshness-") as tmp:
        dev = DevProcess(Path(tmp) / "data")
        dev.start()
        try:
            loadgen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "heatmap_cli.cli",
                    "loadgen",
                    "--target",
                    dev.target,
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(args.duration),
                    "--token-secret",
                    dev.secret,
                    "--concurrency",
                    "32",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            latencies = []
            time.sleep(3)  # let the load reach its pace
            processes = process_tree(dev.pid)  # they outlive the window
            cpu_before = {pid: cpu_seconds(pid) for pid in processes}
            loadgen_before = loadgen_cpu = cpu_seconds(loadgen.pid)
            window_started = time.perf_counter()
            with grpc.insecure_channel(dev.target) as channel:
                stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
                i = 0
                while loadgen.poll() is None:
                    latencies.append(probe_once(stub, dev.secret, f"probe-{i}"))
                    i += 1
                    time.sleep(0.2)
                    # loadgen's CPU so far: once it has exited, its /proc entry is gone
                    with contextlib.suppress(FileNotFoundError):
                        loadgen_cpu = cpu_seconds(loadgen.pid)
            window_s = time.perf_counter() - window_started
            cpu_used = {processes[pid]: cpu_seconds(pid) - cpu_before[pid] for pid in processes}
            cpu_used["loadgen"] = loadgen_cpu - loadgen_before
            summary = (loadgen.stdout.read() if loadgen.stdout else "").strip().splitlines()
        finally:
            dev.stop()
    lat = np.array(latencies) * 1000
    report = json.loads(summary[-1]) if summary and summary[-1].startswith("{") else {}
    accepted = int(report.get("accepted_events", 0))
    # Events accepted in the window: loadgen's rate over the window (its first
    # 3 s, before the window, are left out of both the CPU and the events).
    window_events = accepted / max(float(report.get("elapsed_s", 0)), 1e-9) * window_s
    cpu = {name: round(used / max(window_events, 1) * 1e6, 3) for name, used in cpu_used.items()}
    result = {
        "offered_events_per_s": args.rate,
        "loadgen": summary[-1] if summary else "",
        "probes": len(lat),
        "freshness_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "freshness_ms_p99": round(float(np.percentile(lat, 99)), 1),
        "freshness_ms_max": round(float(lat.max()), 1),
        "window_s": round(window_s, 1),
        "cpu_us_per_accepted_event": cpu,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
