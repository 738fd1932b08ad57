"""Two ``heatmap worker`` processes in one consumer group: a rebalance loses and doubles nothing.

Each process owns its chDB path (chDB allows one process per store), so the
two halves of the counts live in two stores and their per-cell sum must equal
the input. That proves what a rebalance itself must do: the worker giving up
partitions flushes what it holds and commits before they are released, and
the worker taking them over starts exactly after that commit. (With one shared
ClickHouse server the offset watermarks would also absorb a missing commit;
two separate stores cannot, so this test is stricter on the commit path.)
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.worker_support import (
    CellKey,
    WorkerProcess,
    expected_counts,
    fleet_batches,
    produce_batches,
    stored_counts,
    wait_committed,
    worker_env,
)

ASSIGNED = r"partitions assigned: \[\d"


def health(worker: WorkerProcess) -> str:
    """grpc.health.v1 status of the worker's gRPC port (bound to port 0, read from its log)."""
    match = re.search(r"serving on port (\d+)", worker.text())
    assert match, worker.text()[-2000:]
    with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@pytest.mark.slow
def test_two_workers_rebalance_on_join_and_on_leave(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    batches = fleet_batches(240, 500)
    waves = [batches[:80], batches[80:160], batches[160:]]
    group = "rebalance-" + topic
    extra = {"HEATMAP_FLUSH_INTERVAL_S": "0.5", "HEATMAP_FLUSH_MAX_CELLS": "5000"}
    env_a = worker_env(kafka_bootstrap, topic, group, tmp_path / "a", **extra)
    env_b = worker_env(kafka_bootstrap, topic, group, tmp_path / "b", **extra)
    a = WorkerProcess(env_a, tmp_path / "a.log")
    b: WorkerProcess | None = None
    try:
        a.wait_for(ASSIGNED, timeout_s=60)
        produce_batches(kafka_bootstrap, topic, waves[0])
        assert wait_committed(kafka_bootstrap, group, topic, 3, timeout_s=60)

        assert health(a) == "SERVING"

        # B joins while A is busy with the second wave: A flushes and commits on revoke.
        b = WorkerProcess(env_b, tmp_path / "b.log")
        produce_batches(kafka_bootstrap, topic, waves[1])
        b.wait_for(ASSIGNED, timeout_s=90)
        assert wait_committed(kafka_bootstrap, group, topic, 3, timeout_s=90)

        # A leaves (SIGTERM: flush, commit, leave group); B takes every partition.
        produce_batches(kafka_bootstrap, topic, waves[2][:40])
        seen = len(b.text())
        assert a.terminate() == 0
        left = time.monotonic()
        produce_batches(kafka_bootstrap, topic, waves[2][40:])
        b.wait_for(r"partitions assigned: \[0, 1, 2\]", timeout_s=60, after=seen)
        # Well under the 10 s session timeout: A left the group, it was not timed out.
        assert time.monotonic() - left < 8.0
        assert wait_committed(kafka_bootstrap, group, topic, 3, timeout_s=90)
        assert b.terminate() == 0
    finally:
        a.kill()
        if b is not None:
            b.kill()

    in_a, in_b = stored_counts(tmp_path / "a"), stored_counts(tmp_path / "b")
    expected = expected_counts(batches)
    for table, cells in expected.items():
        both: Counter[CellKey] = in_a[table] + in_b[table]
        assert sum(both.values()) == sum(cells.values()), table
        assert both == cells, table
        assert in_a[table], "worker A counted nothing"
        assert in_b[table], "worker B counted nothing"
    assert re.search(ASSIGNED, a.text())
