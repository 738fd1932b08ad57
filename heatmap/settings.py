"""Typed, frozen settings read from ``HEATMAP_*`` environment variables.

Every variable name lives in this module and nowhere else: each section is a
frozen dataclass whose fields carry their variable (``Env``, after
``HEATMAP_``) and their constraints in the type. ``Settings.from_env`` reads
each section through a pydantic-settings model built from that dataclass,
with the section's cross-field rules as the model's validator, and turns bad
values into one ``SettingsError`` line naming each variable (never echoing a
secret's value). Values that only some deployables need are optional here and
demanded by that deployable through ``require_*`` (so ``heatmap gateway``
fails fast without Kafka, while ``heatmap query-api`` does not care). Secrets
are excluded from ``repr``.

The sections are dataclasses, not the models themselves, because callers derive
variants with ``dataclasses.replace`` and build sections by hand, and neither
may read the process environment: only ``from_env`` does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Self, TypeVar, get_type_hints
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
)

from schemas.event_rules import DEFAULT_MAX_EVENT_AGE_S, MAX_EVENT_AGE_LIMIT_S

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

PREFIX = "HEATMAP_"


class SettingsError(ValueError):
    """A HEATMAP_* variable is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Env:
    """A field's variable, after ``HEATMAP_`` (``None``: derived, not read)."""

    name: str | None


# ------------------------------------------------------------ value checks


def _choice(*allowed: str, fold: Callable[[str], str] = str.lower) -> AfterValidator:
    def check(value: str) -> str:
        if fold(value) not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return fold(value)

    return AfterValidator(check)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host/path")
    return value


def _clickhouse_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "chdb":
        if not parts.path or parts.path == "/":
            raise ValueError("chdb:// needs a path, e.g. chdb:///var/lib/heatmap/chdb")
        return value
    if parts.scheme in ("http", "https") and parts.hostname:
        return value
    raise ValueError("expected chdb:///path or http(s)://user:pass@host:8123/db")


def _clickhouse_user_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://user:password@host:8123/db (a server, not chdb)")
    if not parts.username or not parts.password:
        raise ValueError("the URL must carry the user name and password")
    return value


def _s3_endpoint(value: str) -> str:
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://host:port")
    return f"{parts.scheme}://{parts.netloc}"


JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512")


def _algorithms(value: object) -> object:
    if not isinstance(value, str):
        return value
    algs = tuple(a.strip().upper() for a in value.split(",") if a.strip())
    bad = [a for a in algs if a not in JWT_ALGORITHMS]
    if not algs or bad:
        raise ValueError(f"unsupported {bad or 'empty list'}; allowed {sorted(JWT_ALGORITHMS)}")
    return algs


def _readable_file(path: Path) -> Path:
    try:
        with path.open("rb"):  # fail at start-up, not at the first connection
            pass
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from e
    return path


def _file_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        raise ValueError(f"unreadable ({e.strerror or e})") from e


def _identifier(value: str) -> str:
    if not value.replace("_", "a").isalnum() or value[0].isdigit():
        raise ValueError("letters, digits and _ only, not starting with a digit")
    return value


_PositiveInt = Annotated[int, Gt(0)]
_PositiveFloat = Annotated[float, Gt(0), AllowInfNan(False)]
_NonNegativeFloat = Annotated[float, Ge(0), AllowInfNan(False)]
_Port = Annotated[int, Ge(0), Le(65535)]

KAFKA_SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
KAFKA_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")

# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class AuthSettings:
    jwt_secret: Annotated[str | None, Env("JWT_SECRET")] = field(default=None, repr=False)
    jwt_public_key: Annotated[str | None, Env("JWT_PUBLIC_KEY")] = field(default=None, repr=False)
    jwt_algorithms: Annotated[
        tuple[str, ...], BeforeValidator(_algorithms), Env("JWT_ALGORITHMS")
    ] = ("HS256",)
    jwt_audience: Annotated[str | None, Env("JWT_AUDIENCE")] = None
    jwt_issuer: Annotated[str | None, Env("JWT_ISSUER")] = None
    jwt_leeway_s: Annotated[float, Env("JWT_LEEWAY_S")] = 30.0
    # RS256/ES256 keys by the token's kid from the identity provider (heatmap/jwks.py).
    jwt_jwks_url: Annotated[str | None, AfterValidator(_http_url), Env("JWT_JWKS_URL")] = None
    jwt_jwks_lifespan_s: Annotated[_PositiveFloat, Env("JWT_JWKS_LIFESPAN_S")] = 300.0
    jwt_jwks_cooldown_s: Annotated[_NonNegativeFloat, Env("JWT_JWKS_COOLDOWN_S")] = 10.0


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: Annotated[str | None, Env("KAFKA_BOOTSTRAP")] = None
    topic: Annotated[str, Env("KAFKA_TOPIC")] = "touch-batches"
    dlq_topic: Annotated[str, Env("KAFKA_DLQ_TOPIC")] = "touch-batches-dlq"
    partitions: Annotated[_PositiveInt, Env("KAFKA_PARTITIONS")] = 12
    replication: Annotated[_PositiveInt, Env("KAFKA_REPLICATION")] = 1
    consumer_group: Annotated[str, Env("KAFKA_CONSUMER_GROUP")] = "heatmap-workers"
    compression: Annotated[str, _choice(*KAFKA_COMPRESSIONS), Env("KAFKA_COMPRESSION")] = "lz4"
    publish_timeout_s: Annotated[_PositiveFloat, Env("PUBLISH_TIMEOUT_S")] = 5.0
    producer_queue_max_messages: Annotated[_PositiveInt, Env("PRODUCER_QUEUE_MAX_MESSAGES")] = (
        20_000
    )
    producer_queue_max_kbytes: Annotated[_PositiveInt, Env("PRODUCER_QUEUE_MAX_KBYTES")] = 262_144
    # Client security, applied to every Kafka client alike (heatmap/kafka_security.py).
    security_protocol: Annotated[
        str, _choice(*KAFKA_SECURITY_PROTOCOLS), Env("KAFKA_SECURITY_PROTOCOL")
    ] = "plaintext"
    ssl_ca_file: Annotated[
        Path | None, AfterValidator(_readable_file), Env("KAFKA_SSL_CA_FILE")
    ] = None
    ssl_cert_file: Annotated[
        Path | None, AfterValidator(_readable_file), Env("KAFKA_SSL_CERT_FILE")
    ] = None
    ssl_key_file: Annotated[
        Path | None, AfterValidator(_readable_file), Env("KAFKA_SSL_KEY_FILE")
    ] = None
    ssl_key_password: Annotated[str | None, Env("KAFKA_SSL_KEY_PASSWORD")] = field(
        default=None, repr=False
    )
    sasl_mechanism: Annotated[
        str, _choice(*KAFKA_SASL_MECHANISMS, fold=str.upper), Env("KAFKA_SASL_MECHANISM")
    ] = "PLAIN"
    sasl_username: Annotated[str | None, Env("KAFKA_SASL_USERNAME")] = None
    sasl_password: Annotated[str | None, Env("KAFKA_SASL_PASSWORD")] = field(
        default=None, repr=False
    )


@dataclass(frozen=True)
class ClickHouseSettings:
    url: Annotated[str | None, AfterValidator(_clickhouse_url), Env("CLICKHOUSE_URL")] = field(
        default=None, repr=False
    )
    database: Annotated[str, AfterValidator(_identifier), Env("CLICKHOUSE_DATABASE")] = "heatmap"
    max_execution_time_s: Annotated[_PositiveFloat, Env("CLICKHOUSE_MAX_EXECUTION_TIME_S")] = 10.0
    # The query service's read-only user (name and password taken from this
    # URL); ``heatmap migrate --create-readonly-user`` creates it.
    readonly_url: Annotated[
        str | None, AfterValidator(_clickhouse_user_url), Env("CLICKHOUSE_READONLY_URL")
    ] = field(default=None, repr=False)
    # Days a touch row is kept after its hour, applied by ``heatmap migrate``
    # (heatmap/retention.py); 0 keeps rows for ever. Per-user rows are personal
    # data: 90 days, as PostHog keeps heatmap data. All-users counts: 400 days,
    # so a month can be compared with the same month a year before.
    retention_per_user_days: Annotated[int, Ge(0), Le(36_500), Env("RETENTION_PER_USER_DAYS")] = 90
    retention_all_users_days: Annotated[int, Ge(0), Le(36_500), Env("RETENTION_ALL_USERS_DAYS")] = (
        400
    )


@dataclass(frozen=True)
class S3Settings:
    endpoint: Annotated[str | None, AfterValidator(_s3_endpoint), Env("S3_ENDPOINT")] = None
    access_key: Annotated[str | None, Env("S3_ACCESS_KEY")] = field(default=None, repr=False)
    secret_key: Annotated[str | None, Env("S3_SECRET_KEY")] = field(default=None, repr=False)
    bucket: Annotated[str, Env("S3_BUCKET")] = "heatmap-screenshots"
    region: Annotated[str, Env("S3_REGION")] = "us-east-1"
    presign_ttl_s: Annotated[_PositiveInt, Env("S3_PRESIGN_TTL_S")] = 900


@dataclass(frozen=True)
class ServerSettings:
    grpc_host: Annotated[str, Env("GRPC_HOST")] = "0.0.0.0"
    grpc_port: Annotated[_Port, Env("GRPC_PORT")] = 50051
    metrics_port: Annotated[_Port, Env("METRICS_PORT")] = 9464
    # Whether HEATMAP_METRICS_PORT was set: `heatmap dev` picks a free port otherwise.
    metrics_port_set: Annotated[bool, Env(None)] = False
    max_message_bytes: Annotated[_PositiveInt, Env("GRPC_MAX_MESSAGE_BYTES")] = 16 * 1024 * 1024
    shutdown_grace_s: Annotated[_PositiveFloat, Env("SHUTDOWN_GRACE_S")] = 10.0
    # Calls in progress per server; more get RESOURCE_EXHAUSTED at once.
    # 256 is ~25x the measured steady state (~1,050 RPC/s x ~9 ms per gateway
    # process) and bounds what a burst can hold in memory and in the queue
    # for worker threads.
    max_concurrent_rpcs: Annotated[_PositiveInt, Env("GRPC_MAX_CONCURRENT_RPCS")] = 256


@dataclass(frozen=True)
class WorkerSettings:
    flush_interval_s: Annotated[_PositiveFloat, Env("FLUSH_INTERVAL_S")] = 1.0
    # Events per flush chunk (one insert per table and month): a larger chunk
    # makes fewer, larger parts for the engine to merge (bench_worker: 500 k
    # costs ~40 % less CPU per event than 200 k); capped at 500 k (one block).
    flush_max_cells: Annotated[_PositiveInt, Env("FLUSH_MAX_CELLS")] = 500_000
    # Inserts of one chunk in flight at once, each on its own ClickHouse
    # connection (one per table: the three run side by side instead of one
    # after the other; bench_worker `inserts1` against `inserts3`). 1: in turn.
    insert_concurrency: Annotated[int, Ge(1), Le(16), Env("INSERT_CONCURRENCY")] = 3
    clickhouse_retry_max_s: Annotated[_PositiveFloat, Env("CLICKHOUSE_RETRY_MAX_S")] = 30.0
    # Consumer-group timings: a dead worker's partitions move after the
    # session timeout; a revoke waits (up to the rebalance timeout) for the
    # in-flight flush; commits only shorten the replay after a crash.
    # At least 3 s: heartbeats go every 1 s.
    session_timeout_s: Annotated[
        float, Ge(3), AllowInfNan(False), Env("KAFKA_SESSION_TIMEOUT_S")
    ] = 10.0
    rebalance_timeout_s: Annotated[_PositiveFloat, Env("KAFKA_REBALANCE_TIMEOUT_S")] = 30.0
    commit_interval_s: Annotated[_PositiveFloat, Env("KAFKA_COMMIT_INTERVAL_S")] = 0.5
    # Client batch-id ledger in worker memory, whatever the batch rate: the
    # most recent ids exactly, older ones as a Bloom filter (a hit is checked
    # in ClickHouse).
    ledger_memory_entries: Annotated[int, Ge(1_000), Env("LEDGER_MEMORY_ENTRIES")] = 200_000
    ledger_filter_mb: Annotated[int, Gt(0), Le(4096), Env("LEDGER_FILTER_MB")] = 32


@dataclass(frozen=True)
class IngestSettings:
    # Event times older than this before the receive time are INVALID_ARGUMENT
    # (schemas.event_rules explains the default and the upper limit).
    max_event_age_s: Annotated[int, Gt(0), Le(MAX_EVENT_AGE_LIMIT_S), Env("MAX_EVENT_AGE_S")] = (
        DEFAULT_MAX_EVENT_AGE_S
    )


@dataclass(frozen=True)
class QuerySettings:
    max_per_user_points: Annotated[_PositiveInt, Env("MAX_PER_USER_POINTS")] = 200_000
    # Image decodes and renders at once per query process (uploads included):
    # memory is this times the largest one (README, "Known limits").
    render_max_concurrent: Annotated[_PositiveInt, Env("RENDER_MAX_CONCURRENT")] = 2
    # The explorer (page + Connect RPC for browsers) on this port of the query
    # service, bound on HEATMAP_GRPC_HOST; 0 = off. `heatmap dev`: --http-port.
    http_port: Annotated[_Port, Env("HTTP_PORT")] = 8080
    # k-anonymity (docs/privacy.md): ALL_USERS cells seen by fewer than this
    # many distinct users are hidden (their touches in one suppressed total),
    # and PER_USER needs VIEW_USER_HEATMAPS. 0 = off.
    min_users_per_cell: Annotated[int, Ge(0), Le(1_000_000), Env("MIN_USERS_PER_CELL")] = 0


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
    screenshot_dir: Annotated[Path | None, Env("SCREENSHOT_DIR")] = None
    data_dir: Annotated[Path | None, Env("DATA_DIR")] = None
    log_level: Annotated[
        str, _choice("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper), Env("LOG_LEVEL")
    ] = "INFO"
    # auto: readable lines on a terminal, JSON lines otherwise (heatmap/logs.py).
    log_format: Annotated[str, _choice("auto", "json", "text"), Env("LOG_FORMAT")] = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        read: dict[str, Any] = {}
        errors = []  # every section's, so one start-up names every bad variable
        for name, section in _SECTIONS.items():
            try:
                read[name] = section.read(env)
            except SettingsError as e:
                errors.append(str(e))
        if errors:
            raise SettingsError("; ".join(errors))
        top: Settings = read.pop("")
        settings = replace(top, **read)
        settings.check_retention()
        return settings

    def check_retention(self) -> None:
        """A retention limit longer than the oldest event the gateway accepts, so
        no acknowledged event is deleted by the next merge (when both are set in
        one environment, as in dev and compose; docs/operations.md says why)."""
        oldest_days = self.ingest.max_event_age_s / 86_400
        for variable, days in (
            ("RETENTION_PER_USER_DAYS", self.clickhouse.retention_per_user_days),
            ("RETENTION_ALL_USERS_DAYS", self.clickhouse.retention_all_users_days),
        ):
            if 0 < days <= oldest_days:
                raise SettingsError(
                    f"{PREFIX}{variable}: {days} days is not longer than {PREFIX}MAX_EVENT_AGE_S "
                    f"({oldest_days:g} days): an accepted event would be deleted at the next merge"
                )

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


# ----------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Read:
    """What a section's rules see besides its values: the variables that were set
    (non-empty) and the values of variables that are not fields."""

    given: frozenset[str]
    extra: Mapping[str, Any]


_Rule = Callable[[T, _Read], T]


class _SectionModel(BaseSettings):
    """One section's variables as pydantic-settings reads them from a given mapping."""

    # Values arrive only through ``from_env``'s mapping (case-sensitive, "" is
    # unset, unknown HEATMAP_* names ignored); inputs stay out of pydantic's
    # own messages because some are secrets; defaults are the dataclass's own,
    # trusted as written.
    model_config = SettingsConfigDict(
        case_sensitive=True,
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        validate_default=False,
    )
    section: ClassVar[_Section[Any]]
    _value: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        spec = type(self).section
        names = {f.name for f in dataclasses.fields(spec.cls)}
        values = {k: getattr(self, k) for k in type(self).model_fields if k in names}
        given = frozenset(spec.variable(k) for k in self.model_fields_set)
        extra = {k: getattr(self, k) for k in type(self).model_fields if k not in names}
        value = spec.cls(**values)
        for rule in spec.rules:
            value = rule(value, _Read(given, extra))
        self._value = value
        return self


class _MappingSource(EnvSettingsSource):
    """The environment source over a given mapping rather than ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._env.items() if v != ""}

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        return value  # every variable is plain text (no JSON): validators parse lists


@dataclass(frozen=True)
class _Section(Generic[T]):
    cls: type[T]
    rules: tuple[_Rule[T], ...] = ()
    # Variables that are not fields of ``cls``, for the rules to use:
    # key -> (variable after HEATMAP_, type).
    extra: Mapping[str, tuple[str, Any]] = field(default_factory=dict)

    def variable(self, name: str) -> str:
        return self.model.model_fields[name].validation_alias  # type: ignore[return-value]

    @functools.cached_property
    def model(self) -> type[_SectionModel]:
        hints = get_type_hints(self.cls, include_extras=True)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(self.cls):
            hint = hints[f.name]
            env = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Env)), None)
            if dataclasses.is_dataclass(f.default) or (env is not None and env.name is None):
                continue  # a nested section, or derived
            if env is None or env.name is None:
                raise TypeError(f"{self.cls.__name__}.{f.name}: no Env(...) variable")
            fields[f.name] = (hint, Field(default=f.default, validation_alias=PREFIX + env.name))
        for key, (name, hint) in self.extra.items():
            fields[key] = (hint, Field(default=None, validation_alias=PREFIX + name))
        model = create_model(
            self.cls.__name__ + "Env", __base__=_SectionModel, __module__=__name__, **fields
        )
        model.section = self
        return model

    def read(self, env: Mapping[str, str]) -> T:
        model = self.model
        try:
            read = model(_build_sources=((_MappingSource(model, env),), {}))  # type: ignore[call-arg]
        except ValidationError as e:
            raise SettingsError(self._describe(e)) from None
        return read._value  # type: ignore[no-any-return]

    def _describe(self, error: ValidationError) -> str:
        """One line per pydantic error list, naming the variable and the value
        unless it is a secret (a field kept out of ``repr``)."""
        read = self.model.model_fields
        secret = {
            self.variable(f.name)
            for f in dataclasses.fields(self.cls)
            if f.name in read and not f.repr
        }
        parts = []
        for e in error.errors(include_url=False, include_input=True):
            msg = str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"]
            if not e["loc"]:
                parts.append(msg)  # a cross-field rule names its variables itself
            elif (name := str(e["loc"][0])) in secret:
                parts.append(f"{name}: {msg}")
            else:
                parts.append(f"{name}={e['input']!r}: {msg}")
        return "; ".join(parts)


# ------------------------------------------------------ cross-field rules


def _auth_keys(auth: AuthSettings, read: _Read) -> AuthSettings:
    key = auth.jwt_public_key or read.extra["jwt_public_key_file"]
    if f"{PREFIX}JWT_ALGORITHMS" in read.given:
        if any(a.startswith("HS") for a in auth.jwt_algorithms) and not auth.jwt_secret:
            raise ValueError(f"{PREFIX}JWT_ALGORITHMS: HS* algorithms need {PREFIX}JWT_SECRET")
        if any(not a.startswith("HS") for a in auth.jwt_algorithms) and not (
            key or auth.jwt_jwks_url
        ):
            raise ValueError(
                f"{PREFIX}JWT_ALGORITHMS: RS*/ES* algorithms need {PREFIX}JWT_PUBLIC_KEY(_FILE) "
                f"or {PREFIX}JWT_JWKS_URL"
            )
        algorithms = auth.jwt_algorithms
    elif not auth.jwt_secret:
        algorithms = ("RS256", "ES256")
    elif key or auth.jwt_jwks_url:
        algorithms = ("HS256", "RS256", "ES256")
    else:
        algorithms = ("HS256",)
    return replace(auth, jwt_public_key=key, jwt_algorithms=algorithms)


def _kafka_security(kafka: KafkaSettings, read: _Read) -> KafkaSettings:
    """Reject TLS or SASL options the chosen protocol would silently ignore."""
    protocol_var = f"{PREFIX}KAFKA_SECURITY_PROTOCOL"
    tls = kafka.security_protocol in ("ssl", "sasl_ssl")
    sasl = kafka.security_protocol.startswith("sasl_")
    for name in ("SSL_CA_FILE", "SSL_CERT_FILE", "SSL_KEY_FILE", "SSL_KEY_PASSWORD"):
        if f"{PREFIX}KAFKA_{name}" in read.given and not tls:
            raise ValueError(f"{PREFIX}KAFKA_{name}: needs {protocol_var}=ssl or sasl_ssl")
    if (kafka.ssl_cert_file is None) != (kafka.ssl_key_file is None):
        raise ValueError(
            f"{PREFIX}KAFKA_SSL_CERT_FILE and {PREFIX}KAFKA_SSL_KEY_FILE: set both or neither"
        )
    if kafka.ssl_key_password is not None and kafka.ssl_key_file is None:
        raise ValueError(f"{PREFIX}KAFKA_SSL_KEY_PASSWORD: needs {PREFIX}KAFKA_SSL_KEY_FILE")
    for name in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"):
        if f"{PREFIX}KAFKA_{name}" in read.given and not sasl:
            raise ValueError(
                f"{PREFIX}KAFKA_{name}: needs {protocol_var}=sasl_plaintext or sasl_ssl"
            )
    if sasl and not (kafka.sasl_username and kafka.sasl_password):
        raise ValueError(
            f"{PREFIX}KAFKA_SASL_USERNAME and {PREFIX}KAFKA_SASL_PASSWORD: "
            f"required with {protocol_var}={kafka.security_protocol}"
        )
    return kafka


def _s3_keys(s3: S3Settings, read: _Read) -> S3Settings:
    if s3.endpoint and not (s3.access_key and s3.secret_key):
        raise ValueError(
            f"{PREFIX}S3_ACCESS_KEY and {PREFIX}S3_SECRET_KEY: required with {PREFIX}S3_ENDPOINT"
        )
    return s3


def _metrics_port_set(server: ServerSettings, read: _Read) -> ServerSettings:
    return replace(server, metrics_port_set=f"{PREFIX}METRICS_PORT" in read.given)


def _rebalance_outlasts_flush(worker: WorkerSettings, read: _Read) -> WorkerSettings:
    if worker.flush_interval_s * 2 >= worker.rebalance_timeout_s:
        raise ValueError(
            f"{PREFIX}KAFKA_REBALANCE_TIMEOUT_S: must exceed twice {PREFIX}FLUSH_INTERVAL_S "
            "(a rebalance waits for the in-flight flush)"
        )
    return worker


# Section attribute of ``Settings`` ("": its own fields) -> how it is read.
_SECTIONS: dict[str, _Section[Any]] = {
    "auth": _Section(
        AuthSettings,
        rules=(_auth_keys,),
        extra={
            "jwt_public_key_file": (
                "JWT_PUBLIC_KEY_FILE",
                Annotated[Path | None, AfterValidator(_file_text)],
            )
        },
    ),
    "kafka": _Section(KafkaSettings, rules=(_kafka_security,)),
    "clickhouse": _Section(ClickHouseSettings),
    "s3": _Section(S3Settings, rules=(_s3_keys,)),
    "server": _Section(ServerSettings, rules=(_metrics_port_set,)),
    "worker": _Section(WorkerSettings, rules=(_rebalance_outlasts_flush,)),
    "query": _Section(QuerySettings),
    "ingest": _Section(IngestSettings),
    "": _Section(Settings),
}
