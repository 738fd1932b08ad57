"""``heatmap infra up|status|down``: daemons that outlive the command, stopped by ``down``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from minio import Minio

from heatmap_devtools.localinfra.process import service_env

pytestmark = pytest.mark.slow


def heatmap(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "heatmap_cli.cli", *args],
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_up_serves_kafka_and_s3_until_down(tmp_path: Path) -> None:
    root = tmp_path / "infra"
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in heatmap("infra", "up", "--dir", str(root)).splitlines()
        if line.startswith("export ")
    )
    pids = []
    try:
        status = json.loads(heatmap("infra", "status", "--dir", str(root)))
        assert status["running"] == "yes"
        pids = [int(status["kafka_pid"]), int(status["s3_pid"])]
        brokers = AdminClient({"bootstrap.servers": exports["HEATMAP_KAFKA_BOOTSTRAP"]})
        assert brokers.list_topics(timeout=10).brokers
        s3 = Minio(
            exports["HEATMAP_S3_ENDPOINT"].removeprefix("http://"),
            access_key=exports["HEATMAP_S3_ACCESS_KEY"],
            secret_key=exports["HEATMAP_S3_SECRET_KEY"],
            secure=False,
        )
        assert isinstance(s3.list_buckets(), list)
    finally:
        heatmap("infra", "down", "--dir", str(root))
    assert json.loads(heatmap("infra", "status", "--dir", str(root)))["running"] == "no"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
