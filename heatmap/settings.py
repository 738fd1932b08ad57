"""Typed, frozen settings read from ``HEATMAP_*`` environment variables.

Every variable name lives in this module and nowhere else. ``Settings.from_env``
parses and validates all of them at start-up; a bad value raises
``SettingsError`` naming the variable. Values that only some deployables need
are optional here and demanded by that deployable through ``require_*``
(so ``heatmap gateway`` fails fast without Kafka, while ``heatmap query-api``
does not care). Secrets are excluded from ``repr``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

PREFIX = "HEATMAP_"


class SettingsError(ValueError):
    """A HEATMAP_* variable is missing or invalid; the message names it."""


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key: str | None = field(default=None, repr=False)
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_s: float = 30.0


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str | None = None
    topic: str = "touch-batches"
    dlq_topic: str = "touch-batches-dlq"
    partitions: int = 12
    replication: int = 1
    consumer_group: str = "heatmap-workers"
    compression: str = "lz4"
    publish_timeout_s: float = 5.0
    producer_queue_max_messages: int = 20_000
    producer_queue_max_kbytes: int = 262_144


@dataclass(frozen=True)
class ClickHouseSettings:
    url: str | None = field(default=None, repr=False)
    database: str = "heatmap"
    max_execution_time_s: float = 10.0


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    bucket: str = "heatmap-screenshots"
    region: str = "us-east-1"
    presign_ttl_s: int = 900


@dataclass(frozen=True)
class ServerSettings:
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    metrics_port: int = 9464
    max_message_bytes: int = 16 * 1024 * 1024
    shutdown_grace_s: float = 10.0


@dataclass(frozen=True)
class WorkerSettings:
    flush_interval_s: float = 1.0
    flush_max_cells: int = 200_000
    clickhouse_retry_max_s: float = 30.0
    # Consumer-group timings: a dead worker's partitions move after the
    # session timeout; a revoke waits (up to the rebalance timeout) for the
    # in-flight flush; commits only shorten the replay after a crash.
    session_timeout_s: float = 10.0
    rebalance_timeout_s: float = 30.0
    commit_interval_s: float = 0.5


@dataclass(frozen=True)
class QuerySettings:
    max_per_user_points: int = 200_000


@dataclass(frozen=True)
class Settings:
    auth: AuthSettings = AuthSettings()
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    s3: S3Settings = S3Settings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()
    query: QuerySettings = QuerySettings()
    screenshot_dir: Path | None = None
    data_dir: Path | None = None
    log_level: str = "INFO"
    log_format: str = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return _parse(os.environ if env is None else env)

    # What each deployable needs: fail at start-up, naming the variable.
    def require_kafka(self) -> str:
        if not self.kafka.bootstrap:
            raise SettingsError(f"{PREFIX}KAFKA_BOOTSTRAP: required (host:port[,host:port])")
        return self.kafka.bootstrap

    def require_clickhouse(self) -> str:
        if not self.clickhouse.url:
            raise SettingsError(
                f"{PREFIX}CLICKHOUSE_URL: required (chdb:///path or http(s)://user:pass@host:8123/db)"
            )
        return self.clickhouse.url

    def require_auth(self) -> None:
        if not self.auth.jwt_secret and not self.auth.jwt_public_key:
            raise SettingsError(
                f"{PREFIX}JWT_SECRET or {PREFIX}JWT_PUBLIC_KEY(_FILE): one is required"
            )

    def require_screenshot_store(self) -> None:
        if self.s3.endpoint is None and self.screenshot_dir is None:
            raise SettingsError(
                f"{PREFIX}S3_ENDPOINT (with _ACCESS_KEY, _SECRET_KEY, _BUCKET) or "
                f"{PREFIX}SCREENSHOT_DIR: one is required"
            )


# ----------------------------------------------------------------- parsing


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str | None:
        value = self._env.get(PREFIX + name)
        return value if value not in (None, "") else None

    def get(self, name: str, parse: Callable[[str], T], default: T, why: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as e:
            raise SettingsError(f"{PREFIX}{name}={value!r}: {why} ({e})") from e

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def positive_int(self, name: str, default: int) -> int:
        return self.get(name, _positive(int), default, "must be a positive integer")

    def port(self, name: str, default: int) -> int:
        return self.get(name, _port, default, "must be a port number 0..65535")

    def positive_float(self, name: str, default: float) -> float:
        return self.get(name, _positive(float), default, "must be a positive number")


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(value: str) -> T:
        parsed = kind(value)
        if not (isinstance(parsed, int | float) and math.isfinite(parsed) and parsed > 0):
            raise ValueError("not > 0")
        return parsed

    return parse


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("out of range")
    return port


def _clickhouse_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "chdb":
        if not parts.path or parts.path == "/":
            raise ValueError("chdb:// needs a path, e.g. chdb:///var/lib/heatmap/chdb")
        return value
    if parts.scheme in ("http", "https") and parts.hostname:
        return value
    raise ValueError("expected chdb:///path or http(s)://user:pass@host:8123/db")


def _s3_endpoint(value: str) -> str:
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host:port")
    return f"{parts.scheme}://{parts.netloc}"


def _algorithms(value: str) -> tuple[str, ...]:
    allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
    algs = tuple(a.strip().upper() for a in value.split(",") if a.strip())
    bad = [a for a in algs if a not in allowed]
    if not algs or bad:
        raise ValueError(f"unsupported {bad or 'empty list'}; allowed {sorted(allowed)}")
    return algs


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return value.lower()

    return parse


def _parse(env: Mapping[str, str]) -> Settings:
    r = _Reader(env)

    public_key = r.raw("JWT_PUBLIC_KEY")
    key_file = r.raw("JWT_PUBLIC_KEY_FILE")
    if public_key is None and key_file is not None:
        try:
            public_key = Path(key_file).read_text()
        except OSError as e:
            raise SettingsError(
                f"{PREFIX}JWT_PUBLIC_KEY_FILE={key_file!r}: unreadable ({e})"
            ) from e
    secret = r.raw("JWT_SECRET")
    default_algs: tuple[str, ...] = ("HS256",) if secret else ("RS256", "ES256")
    if secret and public_key:
        default_algs = ("HS256", "RS256", "ES256")
    auth = AuthSettings(
        jwt_secret=secret,
        jwt_public_key=public_key,
        jwt_algorithms=r.get("JWT_ALGORITHMS", _algorithms, default_algs, "bad algorithm list"),
        jwt_audience=r.raw("JWT_AUDIENCE"),
        jwt_issuer=r.raw("JWT_ISSUER"),
        jwt_leeway_s=r.get("JWT_LEEWAY_S", float, 30.0, "must be a number of seconds"),
    )
    if r.raw("JWT_ALGORITHMS") is not None:
        if any(a.startswith("HS") for a in auth.jwt_algorithms) and not secret:
            raise SettingsError(f"{PREFIX}JWT_ALGORITHMS: HS* algorithms need {PREFIX}JWT_SECRET")
        if any(not a.startswith("HS") for a in auth.jwt_algorithms) and not public_key:
            raise SettingsError(
                f"{PREFIX}JWT_ALGORITHMS: RS*/ES* algorithms need {PREFIX}JWT_PUBLIC_KEY(_FILE)"
            )

    kafka = KafkaSettings(
        bootstrap=r.raw("KAFKA_BOOTSTRAP"),
        topic=r.text("KAFKA_TOPIC", KafkaSettings.topic),
        dlq_topic=r.text("KAFKA_DLQ_TOPIC", KafkaSettings.dlq_topic),
        partitions=r.positive_int("KAFKA_PARTITIONS", KafkaSettings.partitions),
        replication=r.positive_int("KAFKA_REPLICATION", KafkaSettings.replication),
        consumer_group=r.text("KAFKA_CONSUMER_GROUP", KafkaSettings.consumer_group),
        compression=r.get(
            "KAFKA_COMPRESSION",
            _choice("none", "gzip", "snappy", "lz4", "zstd"),
            KafkaSettings.compression,
            "bad codec",
        ),
        publish_timeout_s=r.positive_float("PUBLISH_TIMEOUT_S", KafkaSettings.publish_timeout_s),
        producer_queue_max_messages=r.positive_int(
            "PRODUCER_QUEUE_MAX_MESSAGES", KafkaSettings.producer_queue_max_messages
        ),
        producer_queue_max_kbytes=r.positive_int(
            "PRODUCER_QUEUE_MAX_KBYTES", KafkaSettings.producer_queue_max_kbytes
        ),
    )
    clickhouse = ClickHouseSettings(
        url=r.get("CLICKHOUSE_URL", _clickhouse_url, None, "bad ClickHouse URL"),
        database=r.get("CLICKHOUSE_DATABASE", _identifier, ClickHouseSettings.database, "bad name"),
        max_execution_time_s=r.positive_float(
            "CLICKHOUSE_MAX_EXECUTION_TIME_S", ClickHouseSettings.max_execution_time_s
        ),
    )
    s3 = S3Settings(
        endpoint=r.get("S3_ENDPOINT", _s3_endpoint, None, "bad endpoint"),
        access_key=r.raw("S3_ACCESS_KEY"),
        secret_key=r.raw("S3_SECRET_KEY"),
        bucket=r.text("S3_BUCKET", S3Settings.bucket),
        region=r.text("S3_REGION", S3Settings.region),
        presign_ttl_s=r.positive_int("S3_PRESIGN_TTL_S", S3Settings.presign_ttl_s),
    )
    if s3.endpoint and not (s3.access_key and s3.secret_key):
        raise SettingsError(
            f"{PREFIX}S3_ACCESS_KEY and {PREFIX}S3_SECRET_KEY: required with {PREFIX}S3_ENDPOINT"
        )
    server = ServerSettings(
        grpc_host=r.text("GRPC_HOST", ServerSettings.grpc_host),
        grpc_port=r.port("GRPC_PORT", ServerSettings.grpc_port),
        metrics_port=r.port("METRICS_PORT", ServerSettings.metrics_port),
        max_message_bytes=r.positive_int(
            "GRPC_MAX_MESSAGE_BYTES", ServerSettings.max_message_bytes
        ),
        shutdown_grace_s=r.positive_float("SHUTDOWN_GRACE_S", ServerSettings.shutdown_grace_s),
    )
    worker = WorkerSettings(
        flush_interval_s=r.positive_float("FLUSH_INTERVAL_S", WorkerSettings.flush_interval_s),
        flush_max_cells=r.positive_int("FLUSH_MAX_CELLS", WorkerSettings.flush_max_cells),
        clickhouse_retry_max_s=r.positive_float(
            "CLICKHOUSE_RETRY_MAX_S", WorkerSettings.clickhouse_retry_max_s
        ),
        session_timeout_s=r.positive_float(
            "KAFKA_SESSION_TIMEOUT_S", WorkerSettings.session_timeout_s
        ),
        rebalance_timeout_s=r.positive_float(
            "KAFKA_REBALANCE_TIMEOUT_S", WorkerSettings.rebalance_timeout_s
        ),
        commit_interval_s=r.positive_float(
            "KAFKA_COMMIT_INTERVAL_S", WorkerSettings.commit_interval_s
        ),
    )
    if worker.session_timeout_s < 3.0:
        raise SettingsError(f"{PREFIX}KAFKA_SESSION_TIMEOUT_S: at least 3 s (heartbeats every 1 s)")
    if worker.flush_interval_s * 2 >= worker.rebalance_timeout_s:
        raise SettingsError(
            f"{PREFIX}KAFKA_REBALANCE_TIMEOUT_S: must exceed twice {PREFIX}FLUSH_INTERVAL_S "
            "(a rebalance waits for the in-flight flush)"
        )
    query = QuerySettings(
        max_per_user_points=r.positive_int("MAX_PER_USER_POINTS", QuerySettings.max_per_user_points)
    )
    screenshot_dir = r.raw("SCREENSHOT_DIR")
    data_dir = r.raw("DATA_DIR")
    return Settings(
        auth=auth,
        kafka=kafka,
        clickhouse=clickhouse,
        s3=s3,
        server=server,
        worker=worker,
        query=query,
        screenshot_dir=Path(screenshot_dir) if screenshot_dir else None,
        data_dir=Path(data_dir) if data_dir else None,
        log_level=r.get(
            "LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info", "bad level"
        ).upper(),
        log_format=r.get("LOG_FORMAT", _choice("json", "text"), "json", "bad format"),
    )


def _identifier(value: str) -> str:
    if not value.replace("_", "a").isalnum() or value[0].isdigit():
        raise ValueError("letters, digits and _ only, not starting with a digit")
    return value
