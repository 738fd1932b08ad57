"""Ports: two ``heatmap dev`` side by side, and a taken port as one line with exit code 2."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.process import free_port, service_env
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another server is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        yield listener.getsockname()[1]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heatmap_cli.cli", *args],
        env=service_env(HEATMAP_LOG_FORMAT="text", **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_naming(result: subprocess.CompletedProcess[str], setting: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert setting in lines[0], lines[0]
    assert "port in use" in lines[0], lines[0]


def test_dev_grpc_port_taken(tmp_path: Path, taken_port: int) -> None:
    data_dir = tmp_path / "data"
    result = run_cli(["dev", "--grpc-port", str(taken_port), "--data-dir", str(data_dir)], {})
    assert_one_line_naming(result, f"--grpc-port={taken_port}")
    assert not data_dir.exists(), "failed before starting anything"


def test_dev_metrics_port_taken(tmp_path: Path, taken_port: int) -> None:
    data_dir = tmp_path / "data"
    result = run_cli(
        ["dev", "--grpc-port", str(free_port()), "--data-dir", str(data_dir)],
        {"HEATMAP_METRICS_PORT": str(taken_port)},
    )
    assert_one_line_naming(result, f"HEATMAP_METRICS_PORT={taken_port}")
    assert not data_dir.exists()


@pytest.mark.parametrize("command", ["gateway", "worker", "query-api"])
@pytest.mark.parametrize("variable", ["HEATMAP_GRPC_PORT", "HEATMAP_METRICS_PORT"])
def test_deployable_port_taken(command: str, variable: str, taken_port: int) -> None:
    env = {
        "HEATMAP_GRPC_HOST": "127.0.0.1",
        "HEATMAP_GRPC_PORT": str(free_port()),
        # Off unless it is the one under test: a real one would bind 0.0.0.0.
        "HEATMAP_METRICS_PORT": "0",
        "HEATMAP_JWT_SECRET": "test-secret-0123456789-0123456789-abcdef",
        # Never reached: the port check comes before any connection.
        "HEATMAP_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "HEATMAP_CLICKHOUSE_URL": "http://default:x@127.0.0.1:1/heatmap",
        "HEATMAP_SCREENSHOT_DIR": "/nonexistent-heatmap-shots",
    }
    env[variable] = str(taken_port)
    assert_one_line_naming(run_cli([command], env), f"{variable}={taken_port}")


# ------------------------------------------------------------ side by side


@pytest.fixture
def two_devs(tmp_path: Path) -> Iterator[tuple[DevProcess, DevProcess]]:
    first = DevProcess(tmp_path / "one", metrics=True)
    second = DevProcess(tmp_path / "two", metrics=True)
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.kill_leftovers()
        second.kill_leftovers()


def ingest(dev: DevProcess, screen: str, n: int) -> None:
    at = Timestamp()
    at.FromSeconds(int(time.time()) - 60)
    event = heatmap_pb2.TouchEvent(
        screen_name=screen, x=0.25, y=0.75, event_type=heatmap_pb2.TAP, timestamp=at
    )
    token = mint_token(dev.secret, "device", [])
    with grpc.insecure_channel(dev.target) as channel:
        reply = heatmap_pb2_grpc.HeatmapServiceStub(channel).IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(events=[event] * n),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    assert reply.ingested_count == n


def total(dev: DevProcess, screen: str) -> int:
    token = mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])
    with grpc.insecure_channel(dev.target) as channel:
        reply = heatmap_pb2_grpc.HeatmapServiceStub(channel).QueryHeatmapData(
            heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    count: int = reply.total_count
    return count


@pytest.mark.slow
def test_two_dev_instances_side_by_side(two_devs: tuple[DevProcess, DevProcess]) -> None:
    first, second = two_devs
    assert first.port != second.port
    # Each picked its own metrics port and printed it; both answer.
    assert first.metrics_url != second.metrics_url
    for dev in two_devs:
        with urllib.request.urlopen(dev.metrics_url, timeout=10) as response:
            assert b"heatmap_" in response.read()

    screen = f"Twin-{uuid.uuid4().hex[:6]}"
    ingest(first, screen, 5)
    ingest(second, screen, 9)
    deadline = time.monotonic() + 30
    while (total(first, screen), total(second, screen)) != (5, 9):
        assert time.monotonic() < deadline, (total(first, screen), total(second, screen))
        time.sleep(0.2)
    time.sleep(1.5)  # several flush intervals: neither sees the other's events later
    assert (total(first, screen), total(second, screen)) == (5, 9)
    assert first.stop() == 0
    assert second.stop() == 0
    assert not first.broker_jvms()
    assert not second.broker_jvms()
