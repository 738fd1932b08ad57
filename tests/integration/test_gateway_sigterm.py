"""`heatmap gateway` as a process: SIGTERM with calls in flight loses no acknowledged batch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from heatmap.settings import KafkaSettings
from heatmap_devtools.localinfra.process import free_port, service_env
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.integration.test_gateway_support import (
    auth,
    batch_ids,
    ingest_request,
    read_topic,
    wait_health,
)

CLIENTS = 24


@dataclass(frozen=True)
class Outcome:
    batch_id: str
    started: float
    ended: float
    code: grpc.StatusCode


def gateway_env(kafka: KafkaSettings, port: int) -> dict[str, str]:
    return service_env(
        HEATMAP_KAFKA_BOOTSTRAP=kafka.bootstrap or "",
        HEATMAP_KAFKA_TOPIC=kafka.topic,
        HEATMAP_JWT_SECRET=TEST_JWT_SECRET,
        HEATMAP_GRPC_HOST="127.0.0.1",
        HEATMAP_GRPC_PORT=str(port),
        HEATMAP_METRICS_PORT="0",
        HEATMAP_SHUTDOWN_GRACE_S="10",
        HEATMAP_LOG_FORMAT="json",
    )


async def client_loop(
    stub: heatmap_pb2_grpc.HeatmapServiceStub, client: int, out: list[Outcome]
) -> None:
    """Send until the server refuses; every call's outcome is recorded."""
    for seq in range(100_000):
        batch_id = f"c{client}-{seq}"
        started = time.monotonic()
        try:
            await stub.IngestTouchEvents(
                ingest_request(50, batch_id), metadata=auth(f"device-{client}"), timeout=10
            )
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            code = e.code()
        out.append(Outcome(batch_id, started, time.monotonic(), code))
        if code != grpc.StatusCode.OK:
            return


async def test_sigterm_drains_in_flight_calls_and_exits_zero(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "heatmap_cli.cli",
            "gateway",
            env=gateway_env(kafka_settings, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_until_up(channel, proc, log_path)
            stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
            outcomes: list[Outcome] = []
            clients = [asyncio.create_task(client_loop(stub, c, outcomes)) for c in range(CLIENTS)]
            await asyncio.sleep(2.0)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await asyncio.gather(*clients)
        returncode = await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    logs = tail(log_path)
    assert returncode == 0, logs[-3000:]
    acked = [o for o in outcomes if o.code == grpc.StatusCode.OK]
    in_flight_at_signal = [o for o in acked if o.started < signalled < o.ended]
    assert len(acked) > CLIENTS
    assert in_flight_at_signal, "no call was in flight when SIGTERM arrived"

    published = set(
        batch_ids(read_topic(kafka_settings.bootstrap or "", kafka_settings.topic, len(acked)))
    )
    missing = [o.batch_id for o in acked if o.batch_id not in published]
    assert not missing, f"{len(missing)} acknowledged batches lost, e.g. {missing[:5]}"

    # Refused calls: UNAVAILABLE once the server stopped accepting, or CANCELLED
    # for calls grpc-core had received but the busy server loop had not yet
    # picked up when shutdown began (grpc cancels those; no handler ran, so
    # nothing of them was published and the client retries).
    refused = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert {o.code for o in refused} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert not [o.batch_id for o in refused if o.batch_id in published]

    messages = [json.loads(line)["msg"] for line in logs.splitlines() if line.startswith("{")]
    assert any(m.startswith("stopping: draining") for m in messages), logs[-2000:]
    assert "producer flushed" in messages


def tail(log: Path, chars: int = 1_000_000) -> str:
    return log.read_text()[-chars:]


async def wait_until_up(
    channel: grpc.aio.Channel, proc: asyncio.subprocess.Process, log: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.returncode is None, f"gateway exited: {tail(log, 3000)}"
        with contextlib.suppress(grpc.aio.AioRpcError):
            await wait_health(channel, health_pb2.HealthCheckResponse.SERVING, timeout_s=2)
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"gateway not SERVING: {tail(log, 3000)}")
