"""Real backing services for the test session.

Defaults start the local launchers from ``heatmap_devtools.localinfra`` (Apache Kafka
KRaft, SeaweedFS S3) and use chDB in-process. Two overrides:

* ``HEATMAP_KAFKA_BOOTSTRAP`` / ``HEATMAP_S3_*`` / ``HEATMAP_CLICKHOUSE_URL``
  already set: use those endpoints, start nothing.
* ``HEATMAP_TEST_BACKEND=containers`` on a host with Docker: testcontainers
  starts Kafka, a ClickHouse server and MinIO (the ClickHouse-server path,
  which cannot run on the project's own machines).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from heatmap_devtools.localinfra.kafka import KafkaBroker
from heatmap_devtools.localinfra.seaweedfs import SeaweedS3


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str
    access_key: str
    secret_key: str


def use_containers() -> bool:
    return os.environ.get("HEATMAP_TEST_BACKEND", "local") == "containers"


@contextlib.contextmanager
def kafka_service(workdir: Path) -> Iterator[tuple[str, KafkaBroker | None]]:
    if os.environ.get("HEATMAP_KAFKA_BOOTSTRAP"):
        yield os.environ["HEATMAP_KAFKA_BOOTSTRAP"], None
        return
    if use_containers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server(), None
        return
    broker = KafkaBroker(workdir)
    broker.start()
    try:
        yield broker.bootstrap, broker
    finally:
        broker.stop()


@contextlib.contextmanager
def s3_service(workdir: Path) -> Iterator[S3Endpoint]:
    if os.environ.get("HEATMAP_S3_ENDPOINT"):
        yield S3Endpoint(
            os.environ["HEATMAP_S3_ENDPOINT"],
            os.environ["HEATMAP_S3_ACCESS_KEY"],
            os.environ["HEATMAP_S3_SECRET_KEY"],
        )
        return
    if use_containers():
        from testcontainers.minio import MinioContainer

        with MinioContainer() as minio:
            cfg = minio.get_config()
            yield S3Endpoint("http://" + cfg["endpoint"], cfg["access_key"], cfg["secret_key"])
        return
    server = SeaweedS3(workdir)
    server.start()
    try:
        yield S3Endpoint(
            server.endpoint, server.credentials.access_key, server.credentials.secret_key
        )
    finally:
        server.stop()


@contextlib.contextmanager
def clickhouse_service(workdir: Path) -> Iterator[str]:
    if os.environ.get("HEATMAP_CLICKHOUSE_URL"):
        yield os.environ["HEATMAP_CLICKHOUSE_URL"]
        return
    if use_containers():
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as ch:
            host, port = ch.get_container_host_ip(), ch.get_exposed_port(8123)
            yield f"http://{ch.username}:{ch.password}@{host}:{port}/default"
        return
    # chDB: one path per process (docs/measurements.md), shared by the whole test session;
    # tests isolate themselves with a random database each.
    yield f"chdb://{workdir}"
