"""Session-scoped real services and per-test isolation (random topics, databases)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from heatmap.clickhouse import connect, migrate, quote_identifier
from heatmap.settings import ClickHouseSettings, KafkaSettings, S3Settings, Settings
from heatmap_devtools.localinfra.kafka import KafkaBroker
from tests.services import S3Endpoint, clickhouse_service, kafka_service, s3_service

TEST_JWT_SECRET = "test-secret-0123456789-0123456789-abcdef"


@pytest.fixture(scope="session")
def kafka_session(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, KafkaBroker | None]]:
    with kafka_service(tmp_path_factory.mktemp("kafka")) as service:
        yield service


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_session: tuple[str, KafkaBroker | None]) -> str:
    return kafka_session[0]


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with s3_service(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with clickhouse_service(tmp_path_factory.mktemp("chdb")) as url:
        yield url


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    for future in futures.values():
        future.result(timeout=30)


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    """A fresh 3-partition topic for this test."""
    name = unique("touch")
    create_topic(kafka_bootstrap, name)
    return name


@pytest.fixture
def clickhouse(clickhouse_url: str) -> Iterator[ClickHouseSettings]:
    """A fresh, migrated database for this test, dropped afterwards."""
    # No TTL: some tests store fixed dates, which a retention limit would
    # delete once the calendar passes them (tests/integration/test_retention.py
    # covers the TTLs).
    settings = ClickHouseSettings(
        url=clickhouse_url,
        database=unique("hm"),
        retention_per_user_days=0,
        retention_all_users_days=0,
    )
    migrate(settings)
    yield settings
    admin = connect(settings, database="default")
    try:
        admin.command(f"DROP DATABASE IF EXISTS {quote_identifier(settings.database)}")
    finally:
        admin.close()


@pytest.fixture
def base_settings() -> Settings:
    """Settings for in-process servers: loopback, port 0, test JWT secret."""
    settings = Settings.from_env({"HEATMAP_JWT_SECRET": TEST_JWT_SECRET})
    return replace(
        settings,
        server=replace(settings.server, grpc_host="127.0.0.1", grpc_port=0, metrics_port=0),
    )


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, topic: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=kafka_bootstrap, topic=topic, dlq_topic=topic + "-dlq")


@pytest.fixture
def s3_settings(s3_endpoint: S3Endpoint) -> S3Settings:
    return S3Settings(
        endpoint=s3_endpoint.endpoint,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        bucket=unique("shots").replace("_", "-"),
    )
