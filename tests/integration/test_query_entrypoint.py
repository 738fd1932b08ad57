"""``heatmap query-api`` as its own process: env config, health, a query, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.process import free_port
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET


def test_query_api_process_serves_then_stops_on_sigterm(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "HEATMAP_CLICKHOUSE_URL": f"chdb://{tmp_path}/chdb",  # its own path: its own process
        "HEATMAP_JWT_SECRET": TEST_JWT_SECRET,
        "HEATMAP_SCREENSHOT_DIR": str(tmp_path / "shots"),
        "HEATMAP_GRPC_HOST": "127.0.0.1",
        "HEATMAP_GRPC_PORT": str(port),
        "HEATMAP_METRICS_PORT": str(free_port()),
        "HEATMAP_HTTP_PORT": str(http_port),
        "HEATMAP_LOG_FORMAT": "text",
    }
    for name in ("HEATMAP_S3_ENDPOINT", "HEATMAP_KAFKA_BOOTSTRAP"):
        env.pop(name, None)
    subprocess.run(
        [sys.executable, "-m", "heatmap_cli.cli", "migrate"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
    )
    log = (tmp_path / "query-api.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "heatmap_cli.cli", "query-api"], env=env, stdout=log, stderr=log
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            status = None
            while time.monotonic() < deadline:
                assert process.poll() is None, (tmp_path / "query-api.log").read_text()
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.2)
            assert status == health_pb2.HealthCheckResponse.SERVING
            token = mint_token(TEST_JWT_SECRET, "analyst", [VIEW_HEATMAPS])
            reply = heatmap_pb2_grpc.HeatmapServiceStub(channel).QueryHeatmapData(
                pb.QueryHeatmapDataRequest(screen_name="Home"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            assert (reply.total_count, reply.grid_size) == (0, 64)
        # The explorer's HTTP port, same process: the page and a Connect call.
        base = f"http://127.0.0.1:{http_port}"
        with urllib.request.urlopen(f"{base}/explorer/", timeout=10) as page:
            assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        call = urllib.request.Request(
            f"{base}/heatmap.v1.HeatmapService/QueryHeatmapData",
            data=b'{"screenName": "Home"}',
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(call, timeout=10) as answer:
            assert answer.read() == b'{\n  "gridSize": 64\n}'
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
