"""``heatmap dev``: the whole product in one process on one port, embedded defaults.

Starts what is not configured: a local Kafka broker (unless
``HEATMAP_KAFKA_BOOTSTRAP``), chDB inside the data dir (unless
``HEATMAP_CLICKHOUSE_URL``), a filesystem screenshot store (unless
``HEATMAP_S3_ENDPOINT``); creates the topics and the schema; then runs the
stream worker, the gateway and the query service behind one gRPC endpoint
(every RPC, health, reflection), and the explorer page with its Connect RPC
transport on an HTTP port (``--http-port``, else HEATMAP_HTTP_PORT, default
8080; 0 = off), whose URL is printed with the dev token in its fragment.
Health is SERVING once every part is ready. Ctrl-C / SIGTERM drains and
stops everything, the broker included; so does any other death, ``kill -9``
included (the broker's watchdog sees this process go), and a start after a
crash clears what it left behind.
Everything lives in ``--data-dir``, so a restart keeps all data; the dev JWT
secret is kept there too, so earlier tokens stay valid. One ``heatmap dev``
per data dir (a lock file says which); several run side by side on separate
data dirs and gRPC ports, each with its own free metrics port.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap.clickhouse import connect, migrate
from heatmap.kafka_admin import ensure_topics
from heatmap.ports import ensure_free
from heatmap.serve import Component, serve, start_metrics
from heatmap.settings import Settings, SettingsError
from heatmap_devtools.localinfra.kafka import DataDirInUse, KafkaBroker

logger = logging.getLogger(__name__)

DEV_PARTITIONS = 4
DEV_HOST = "127.0.0.1"


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
        server=replace(settings.server, grpc_host=DEV_HOST, grpc_port=grpc_port),
    )


DEMO_EVENTS = 200_000
# Written once the demo data set is in: later starts on the data dir leave it alone.
DEMO_MARKER = "demo-data-loaded"


def run(
    settings: Settings,
    *,
    grpc_port: int,
    data_dir: Path,
    http_port: int | None = None,
    demo: bool = True,
) -> int:
    # Every port we were told to use, before anything starts: a taken one is
    # a one-line error naming the option, not a traceback after the broker.
    ensure_free("--grpc-port", DEV_HOST, grpc_port)
    http_setting = "--http-port" if http_port is not None else "HEATMAP_HTTP_PORT"
    if http_port is None:
        http_port = settings.query.http_port
    ensure_free(http_setting, DEV_HOST, http_port)
    if settings.server.metrics_port_set and settings.server.metrics_port:
        ensure_free("HEATMAP_METRICS_PORT", DEV_HOST, settings.server.metrics_port)
    data_dir.mkdir(parents=True, exist_ok=True)
    with _own_data_dir(data_dir):
        settings = dev_settings(settings, data_dir, grpc_port)
        broker: KafkaBroker | None = None
        if not settings.kafka.bootstrap:
            broker = KafkaBroker(data_dir.resolve() / "kafka")
            logger.info("starting a local Kafka broker")
            try:
                broker.start()
            except DataDirInUse as e:
                raise SettingsError(f"--data-dir={data_dir}: {e}") from None
            settings = replace(settings, kafka=replace(settings.kafka, bootstrap=broker.bootstrap))
        try:
            ensure_topics(settings.kafka)
            applied = migrate(settings.clickhouse)
            if applied:
                logger.info("ClickHouse schema: applied %s", ", ".join(applied))
            asyncio.run(_serve(settings, http_port, http_setting, demo))
        finally:
            if broker is not None:
                broker.stop()
    return 0


@contextlib.contextmanager
def _own_data_dir(data_dir: Path) -> Iterator[None]:
    """Hold ``<data-dir>/dev.lock`` while running: two instances on one data
    dir would share a broker log dir and a chDB store.

    ``flock`` is released by the kernel however this process ends, so a lock
    left by a crash never needs clearing; the pid inside is only for the message.
    """
    path = data_dir / "dev.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SettingsError(
                f"--data-dir={data_dir}: in use by another heatmap dev (pid {holder}); "
                "stop it or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


async def _serve(settings: Settings, http_port: int, http_setting: str, demo: bool) -> None:
    # Imported here: each stage pulls in its own heavy dependencies (faust...).
    from ingest_gateway.app import Gateway
    from query_api.app import QueryService
    from query_api.explorer.server import explorer_for
    from stream_workers.app import Worker

    registry = CollectorRegistry()
    # Unless told otherwise, a free port: a fixed default would make a second
    # instance fail. Served here rather than by serve() so the banner has it.
    metrics_port: int | None = None
    if not settings.server.metrics_port_set:
        metrics_port = start_metrics(registry, 0, DEV_HOST)
    elif settings.server.metrics_port:
        metrics_port = start_metrics(registry, settings.server.metrics_port, DEV_HOST)
    # One chDB engine per process: the worker and the query service share it.
    clickhouse = connect(settings.clickhouse)
    query = QueryService(settings, registry, clickhouse)
    components: list[Component] = [
        Worker(settings, registry, clickhouse),
        Gateway(settings, registry),
        query,
    ]
    explorer = None
    if http_port:
        explorer = explorer_for(
            query, settings, registry, host=DEV_HOST, port=http_port, port_setting=http_setting
        )
        components.append(explorer)

    loading: list[asyncio.Task[None]] = []

    def banner(port: int) -> None:
        assert settings.auth.jwt_secret is not None
        assert settings.data_dir is not None
        marker = settings.data_dir / DEMO_MARKER
        if demo and not marker.exists():
            target = f"{DEV_HOST}:{port}"
            secret = settings.auth.jwt_secret
            loading.append(
                asyncio.get_running_loop().create_task(_load_demo(target, secret, marker))
            )
        token = mint_token(
            settings.auth.jwt_secret, "dev-user", [VIEW_HEATMAPS, MANAGE_HEATMAPS], 7 * 24 * 3600
        )
        # The fragment never reaches the server; the page moves it into
        # sessionStorage and removes it from the address bar.
        explorer_url = (
            f"http://{DEV_HOST}:{explorer.bound_port}/explorer/#token={token}"
            if explorer is not None
            else "off"
        )
        print(
            f"heatmap dev: gRPC on {DEV_HOST}:{port} (every RPC, health, reflection)\n"
            f"  explorer:  {explorer_url}\n"
            f"  data dir:  {settings.data_dir}\n"
            f"  kafka:     {settings.kafka.bootstrap}\n"
            f"  metrics:   "
            + (f"http://{DEV_HOST}:{metrics_port}/metrics" if metrics_port else "off")
            + f"\n  dev token (VIEW+MANAGE, 7 days):\n{token}",
            file=sys.stdout,
            flush=True,
        )

    try:
        await serve(
            replace(settings, server=replace(settings.server, metrics_port=0)),
            components,
            registry,
            port_setting="--grpc-port",
            on_ready=banner,
        )
    finally:
        for task in loading:
            task.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        clickhouse.close()


async def _load_demo(target: str, secret: str, marker: Path) -> None:
    """The demo data set into a new data dir, through the public API, so the
    explorer's first view is a heatmap and not an empty list."""
    from heatmap_devtools.demo import load_demo_data

    logger.info("demo data: loading 6 screens and %d events (--no-demo skips this)", DEMO_EVENTS)
    try:
        report = await load_demo_data(target, secret, DEMO_EVENTS, quiet=True)
    except Exception:  # the server is serving: a failed demo must not stop it
        logger.exception("demo data: not loaded")
        return
    await asyncio.to_thread(marker.write_text, f"{report.accepted_events}\n")
    logger.info("demo data: %d events accepted", report.accepted_events)
