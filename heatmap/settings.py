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

from schemas.event_rules import DEFAULT_MAX_EVENT_AGE_S, MAX_EVENT_AGE_LIMIT_S

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
    # RS256/ES256 keys by the token's kid from the identity provider (heatmap/jwks.py).
    jwt_jwks_url: str | None = None
    jwt_jwks_lifespan_s: float = 300.0
    jwt_jwks_cooldown_s: float = 10.0


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
    # Client security, applied to every Kafka client alike (heatmap/kafka_security.py).
    security_protocol: str = "plaintext"
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClickHouseSettings:
    url: str | None = field(default=None, repr=False)
    database: str = "heatmap"
    max_execution_time_s: float = 10.0
    # The query service's read-only user (name and password taken from this
    # URL); ``heatmap migrate --create-readonly-user`` creates it.
    readonly_url: str | None = field(default=None, repr=False)


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
    # Whether HEATMAP_METRICS_PORT was set: `heatmap dev` picks a free port otherwise.
    metrics_port_set: bool = False
    max_message_bytes: int = 16 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    # Calls in progress per server; more get RESOURCE_EXHAUSTED at once.
    # 256 is ~25x the measured steady state (~1,050 RPC/s x ~9 ms per gateway
    # process) and bounds what a burst can hold in memory and in the queue
    # for worker threads.
    max_concurrent_rpcs: int = 256


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
    # Client batch-id ledger in worker memory, whatever the batch rate: the
    # most recent ids exactly, older ones as a Bloom filter (a hit is checked
    # in ClickHouse).
    ledger_memory_entries: int = 200_000
    ledger_filter_mb: int = 32


@dataclass(frozen=True)
class IngestSettings:
    # Event times older than this before the receive time are INVALID_ARGUMENT
    # (schemas.event_rules explains the default and the upper limit).
    max_event_age_s: int = DEFAULT_MAX_EVENT_AGE_S


@dataclass(frozen=True)
class QuerySettings:
    max_per_user_points: int = 200_000
    # Image decodes and renders at once per query process (uploads included):
    # memory is this times the largest one (README, "Known limits").
    render_max_concurrent: int = 2


@dataclass(frozen=True)
class Settings:
    auth: AuthSettings = AuthSettings()
    kafka: KafkaSettings = KafkaSettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    s3: S3Settings = S3Settings()
    server: ServerSettings = ServerSettings()
    worker: WorkerSettings = WorkerSettings()
    query: QuerySettings = QuerySettings()
    ingest: IngestSettings = IngestSettings()
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
        if not (self.auth.jwt_secret or self.auth.jwt_public_key or self.auth.jwt_jwks_url):
            raise SettingsError(
                f"{PREFIX}JWT_SECRET, {PREFIX}JWT_PUBLIC_KEY(_FILE) or {PREFIX}JWT_JWKS_URL: "
                "one is required"
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


def _at_most(limit: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        parsed = int(value)
        if not 0 < parsed <= limit:
            raise ValueError("out of range")
        return parsed

    return parse


def _non_negative_float(value: str) -> float:
    parsed = float(value)
    if not (math.isfinite(parsed) and parsed >= 0):
        raise ValueError("not >= 0")
    return parsed


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host/path")
    return value


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


def _upper_choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.upper() not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return value.upper()

    return parse


def _readable_file(value: str) -> Path:
    path = Path(value)
    try:
        with path.open("rb"):  # fail at start-up, not at the first connection
            pass
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from e
    return path


def _clickhouse_user_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://user:password@host:8123/db (a server, not chdb)")
    if not parts.username or not parts.password:
        raise ValueError("the URL must carry the user name and password")
    return value


KAFKA_SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _check_kafka_security(kafka: KafkaSettings, r: _Reader) -> None:
    """Reject TLS or SASL options the chosen protocol would silently ignore."""
    protocol_var = f"{PREFIX}KAFKA_SECURITY_PROTOCOL"
    tls = kafka.security_protocol in ("ssl", "sasl_ssl")
    sasl = kafka.security_protocol.startswith("sasl_")
    for name in ("SSL_CA_FILE", "SSL_CERT_FILE", "SSL_KEY_FILE", "SSL_KEY_PASSWORD"):
        if r.raw("KAFKA_" + name) is not None and not tls:
            raise SettingsError(f"{PREFIX}KAFKA_{name}: needs {protocol_var}=ssl or sasl_ssl")
    if (kafka.ssl_cert_file is None) != (kafka.ssl_key_file is None):
        raise SettingsError(
            f"{PREFIX}KAFKA_SSL_CERT_FILE and {PREFIX}KAFKA_SSL_KEY_FILE: set both or neither"
        )
    if kafka.ssl_key_password is not None and kafka.ssl_key_file is None:
        raise SettingsError(f"{PREFIX}KAFKA_SSL_KEY_PASSWORD: needs {PREFIX}KAFKA_SSL_KEY_FILE")
    for name in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"):
        if r.raw("KAFKA_" + name) is not None and not sasl:
            raise SettingsError(
                f"{PREFIX}KAFKA_{name}: needs {protocol_var}=sasl_plaintext or sasl_ssl"
            )
    if sasl and not (kafka.sasl_username and kafka.sasl_password):
        raise SettingsError(
            f"{PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD: "
            f"required with {protocol_var}={kafka.security_protocol}"
        )


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
    jwks_url = r.get("JWT_JWKS_URL", _http_url, None, "bad JWKS URL")
    default_algs: tuple[str, ...] = ("HS256",) if secret else ("RS256", "ES256")
    if secret and (public_key or jwks_url):
        default_algs = ("HS256", "RS256", "ES256")
    auth = AuthSettings(
        jwt_secret=secret,
        jwt_public_key=public_key,
        jwt_algorithms=r.get("JWT_ALGORITHMS", _algorithms, default_algs, "bad algorithm list"),
        jwt_audience=r.raw("JWT_AUDIENCE"),
        jwt_issuer=r.raw("JWT_ISSUER"),
        jwt_leeway_s=r.get("JWT_LEEWAY_S", float, 30.0, "must be a number of seconds"),
        jwt_jwks_url=jwks_url,
        jwt_jwks_lifespan_s=r.positive_float(
            "JWT_JWKS_LIFESPAN_S", AuthSettings.jwt_jwks_lifespan_s
        ),
        jwt_jwks_cooldown_s=r.get(
            "JWT_JWKS_COOLDOWN_S",
            _non_negative_float,
            AuthSettings.jwt_jwks_cooldown_s,
            "must be a number of seconds >= 0",
        ),
    )
    if r.raw("JWT_ALGORITHMS") is not None:
        if any(a.startswith("HS") for a in auth.jwt_algorithms) and not secret:
            raise SettingsError(f"{PREFIX}JWT_ALGORITHMS: HS* algorithms need {PREFIX}JWT_SECRET")
        if any(not a.startswith("HS") for a in auth.jwt_algorithms) and not (
            public_key or jwks_url
        ):
            raise SettingsError(
                f"{PREFIX}JWT_ALGORITHMS: RS*/ES* algorithms need {PREFIX}JWT_PUBLIC_KEY(_FILE) "
                f"or {PREFIX}JWT_JWKS_URL"
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
        security_protocol=r.get(
            "KAFKA_SECURITY_PROTOCOL",
            _choice(*KAFKA_SECURITY_PROTOCOLS),
            KafkaSettings.security_protocol,
            "bad protocol",
        ),
        ssl_ca_file=r.get("KAFKA_SSL_CA_FILE", _readable_file, None, "unreadable"),
        ssl_cert_file=r.get("KAFKA_SSL_CERT_FILE", _readable_file, None, "unreadable"),
        ssl_key_file=r.get("KAFKA_SSL_KEY_FILE", _readable_file, None, "unreadable"),
        ssl_key_password=r.raw("KAFKA_SSL_KEY_PASSWORD"),
        sasl_mechanism=r.get(
            "KAFKA_SASL_MECHANISM",
            _upper_choice(*KAFKA_SASL_MECHANISMS),
            KafkaSettings.sasl_mechanism,
            "bad mechanism",
        ),
        sasl_username=r.raw("KAFKA_SASL_USERNAME"),
        sasl_password=r.raw("KAFKA_SASL_PASSWORD"),
    )
    _check_kafka_security(kafka, r)
    clickhouse = ClickHouseSettings(
        url=r.get("CLICKHOUSE_URL", _clickhouse_url, None, "bad ClickHouse URL"),
        database=r.get("CLICKHOUSE_DATABASE", _identifier, ClickHouseSettings.database, "bad name"),
        max_execution_time_s=r.positive_float(
            "CLICKHOUSE_MAX_EXECUTION_TIME_S", ClickHouseSettings.max_execution_time_s
        ),
        readonly_url=r.get(
            "CLICKHOUSE_READONLY_URL", _clickhouse_user_url, None, "bad read-only user URL"
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
        metrics_port_set=r.raw("METRICS_PORT") is not None,
        max_message_bytes=r.positive_int(
            "GRPC_MAX_MESSAGE_BYTES", ServerSettings.max_message_bytes
        ),
        shutdown_grace_s=r.positive_float("SHUTDOWN_GRACE_S", ServerSettings.shutdown_grace_s),
        max_concurrent_rpcs=r.positive_int(
            "GRPC_MAX_CONCURRENT_RPCS", ServerSettings.max_concurrent_rpcs
        ),
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
        ledger_memory_entries=r.positive_int(
            "LEDGER_MEMORY_ENTRIES", WorkerSettings.ledger_memory_entries
        ),
        ledger_filter_mb=r.positive_int("LEDGER_FILTER_MB", WorkerSettings.ledger_filter_mb),
    )
    if worker.ledger_memory_entries < 1_000:
        raise SettingsError(f"{PREFIX}LEDGER_MEMORY_ENTRIES: at least 1000")
    if worker.ledger_filter_mb > 4096:
        raise SettingsError(f"{PREFIX}LEDGER_FILTER_MB: at most 4096")
    if worker.session_timeout_s < 3.0:
        raise SettingsError(f"{PREFIX}KAFKA_SESSION_TIMEOUT_S: at least 3 s (heartbeats every 1 s)")
    if worker.flush_interval_s * 2 >= worker.rebalance_timeout_s:
        raise SettingsError(
            f"{PREFIX}KAFKA_REBALANCE_TIMEOUT_S: must exceed twice {PREFIX}FLUSH_INTERVAL_S "
            "(a rebalance waits for the in-flight flush)"
        )
    ingest = IngestSettings(
        max_event_age_s=r.get(
            "MAX_EVENT_AGE_S",
            _at_most(MAX_EVENT_AGE_LIMIT_S),
            IngestSettings.max_event_age_s,
            f"must be a whole number of seconds from 1 to {MAX_EVENT_AGE_LIMIT_S} (400 days)",
        )
    )
    query = QuerySettings(
        max_per_user_points=r.positive_int(
            "MAX_PER_USER_POINTS", QuerySettings.max_per_user_points
        ),
        render_max_concurrent=r.positive_int(
            "RENDER_MAX_CONCURRENT", QuerySettings.render_max_concurrent
        ),
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
        ingest=ingest,
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
