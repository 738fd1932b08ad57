"""Fixtures several integration modules share: a ClickHouse client on the test's database,
in-process worker settings and teardown, and a private Kafka broker a test may stop or freeze."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from heatmap.clickhouse import connect
from heatmap.settings import ClickHouseSettings, KafkaSettings, Settings
from heatmap_devtools.localinfra.kafka import KafkaBroker
from stream_workers.app import Worker
from tests.worker_support import inprocess_settings


@pytest.fixture
def client(clickhouse: ClickHouseSettings) -> Iterator[Client]:
    c = connect(clickhouse)
    yield c
    c.close()


@pytest.fixture
def settings(kafka_settings: KafkaSettings, clickhouse: ClickHouseSettings) -> Settings:
    """Workers in the test process (modules with other servers define their own)."""
    return inprocess_settings(kafka_settings, clickhouse)


@pytest.fixture
async def started() -> AsyncIterator[list[Worker]]:
    """Workers a test started; each is stopped at the end, whatever happened."""
    workers: list[Worker] = []
    yield workers
    for w in workers:
        await w.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of the test's own (not the session's), so it can be stopped or frozen."""
    broker = KafkaBroker(tmp_path / "kafka", heap_mb=384)
    broker.start()
    try:
        yield broker
    finally:
        pid = broker.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # never leave it frozen for stop()
        broker.stop()
