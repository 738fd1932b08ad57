"""``heatmap dev``: the whole product in one process on one port, embedded defaults.

Starts what is not configured: a local Kafka broker (unless
``HEATMAP_KAFKA_BOOTSTRAP``), chDB inside the data dir (unless
``HEATMAP_CLICKHOUSE_URL``), a filesystem screenshot store (unless
``HEATMAP_S3_ENDPOINT``); creates the topics and the schema; then runs the
stream worker, the gateway and the query service behind one gRPC endpoint
(all six RPCs, health, reflection). Health is SERVING once every part is
ready. Ctrl-C / SIGTERM drains and stops everything, the broker included.
Everything lives in ``--data-dir``, so a restart keeps all data; the dev JWT
secret is kept there too, so earlier tokens stay valid.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap.clickhouse import connect, migrate
from heatmap.kafka_admin import ensure_topics
from heatmap.localinfra.kafka import KafkaBroker
from heatmap.serve import Component, serve
from heatmap.settings import Settings

logger = logging.getLogger(__name__)

DEV_PARTITIONS = 4


def dev_settings(settings: Settings, data_dir: Path, grpc_port: int) -> Settings:
    """Fill in the embedded defaults for everything the environment leaves unset."""
    data_dir = data_dir.resolve()
    auth = settings.auth
    if not auth.jwt_secret and not auth.jwt_public_key:
        secret_file = data_dir / "dev-jwt-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_urlsafe(32))
            secret_file.chmod(0o600)
        auth = replace(auth, jwt_secret=secret_file.read_text().strip(), jwt_algorithms=("HS256",))
    clickhouse = settings.clickhouse
    if not clickhouse.url:
        clickhouse = replace(clickhouse, url=f"chdb://{data_dir / 'chdb'}")
    kafka = settings.kafka
    if kafka.partitions == Settings().kafka.partitions:
        kafka = replace(kafka, partitions=DEV_PARTITIONS)
    screenshot_dir = settings.screenshot_dir
    if settings.s3.endpoint is None and screenshot_dir is None:
        screenshot_dir = data_dir / "screenshots"
    return replace(
        settings,
        auth=auth,
        clickhouse=clickhouse,
        kafka=kafka,
        screenshot_dir=screenshot_dir,
        data_dir=data_dir,
        server=replace(settings.server, grpc_host="127.0.0.1", grpc_port=grpc_port),
    )


def run(settings: Settings, *, grpc_port: int, data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = dev_settings(settings, data_dir, grpc_port)
    broker: KafkaBroker | None = None
    if not settings.kafka.bootstrap:
        broker = KafkaBroker(data_dir.resolve() / "kafka")
        logger.info("starting a local Kafka broker")
        broker.start()
        settings = replace(settings, kafka=replace(settings.kafka, bootstrap=broker.bootstrap))
    try:
        ensure_topics(settings.kafka)
        applied = migrate(settings.clickhouse)
        if applied:
            logger.info("ClickHouse schema: applied %s", ", ".join(applied))
        asyncio.run(_serve(settings))
    finally:
        if broker is not None:
            broker.stop()
    return 0


async def _serve(settings: Settings) -> None:
    # Imported here: each stage pulls in its own heavy dependencies (faust...).
    from ingest_gateway.app import Gateway
    from query_api.app import QueryService
    from stream_workers.app import Worker

    registry = CollectorRegistry()
    # One chDB engine per process: the worker and the query service share it.
    clickhouse = connect(settings.clickhouse)
    components: list[Component] = [
        Worker(settings, registry, clickhouse),
        Gateway(settings, registry),
        QueryService(settings, registry, clickhouse),
    ]

    def banner(port: int) -> None:
        assert settings.auth.jwt_secret is not None
        token = mint_token(
            settings.auth.jwt_secret, "dev-user", [VIEW_HEATMAPS, MANAGE_HEATMAPS], 7 * 24 * 3600
        )
        print(
            f"heatmap dev: gRPC on 127.0.0.1:{port} (all six RPCs, health, reflection)\n"
            f"  data dir:  {settings.data_dir}\n"
            f"  kafka:     {settings.kafka.bootstrap}\n"
            f"  metrics:   "
            + (
                f"http://127.0.0.1:{settings.server.metrics_port}/metrics"
                if settings.server.metrics_port
                else "off"
            )
            + f"\n  dev token (VIEW+MANAGE, 7 days):\n{token}",
            file=sys.stdout,
            flush=True,
        )

    try:
        await serve(settings, components, registry, on_ready=banner)
    finally:
        clickhouse.close()
