from __future__ import annotations

from pathlib import Path

import pytest

from heatmap.settings import _SECTIONS, Settings, SettingsError


def test_defaults_parse_from_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.kafka.topic == "touch-batches"
    assert settings.server.grpc_port == 50051
    assert settings.clickhouse.url is None
    assert settings.worker.flush_interval_s == 1.0


def test_values_are_read_and_typed() -> None:
    settings = Settings.from_env(
        {
            "HEATMAP_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
            "HEATMAP_KAFKA_PARTITIONS": "24",
            "HEATMAP_CLICKHOUSE_URL": "chdb:///var/lib/heatmap",
            "HEATMAP_S3_ENDPOINT": "127.0.0.1:9000",
            "HEATMAP_S3_ACCESS_KEY": "ak",
            "HEATMAP_S3_SECRET_KEY": "sk",
            "HEATMAP_FLUSH_INTERVAL_S": "0.5",
            "HEATMAP_SCREENSHOT_DIR": "/tmp/shots",
        }
    )
    assert settings.require_kafka() == "127.0.0.1:9092"
    assert settings.kafka.partitions == 24
    assert settings.s3.endpoint == "http://127.0.0.1:9000"
    assert settings.worker.flush_interval_s == 0.5
    assert settings.screenshot_dir == Path("/tmp/shots")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEATMAP_KAFKA_PARTITIONS", "zero"),
        ("HEATMAP_KAFKA_PARTITIONS", "0"),
        ("HEATMAP_GRPC_PORT", "70000"),
        ("HEATMAP_FLUSH_INTERVAL_S", "nan"),
        ("HEATMAP_CLICKHOUSE_URL", "mysql://x"),
        ("HEATMAP_CLICKHOUSE_URL", "chdb://"),
        ("HEATMAP_CLICKHOUSE_DATABASE", "drop table"),
        ("HEATMAP_KAFKA_COMPRESSION", "brotli"),
        ("HEATMAP_JWT_ALGORITHMS", "none"),
        ("HEATMAP_LOG_LEVEL", "loud"),
        ("HEATMAP_KAFKA_SESSION_TIMEOUT_S", "1"),
        ("HEATMAP_KAFKA_REBALANCE_TIMEOUT_S", "1.5"),
    ],
)
def test_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_missing_requirements_name_the_variable() -> None:
    settings = Settings.from_env({})
    with pytest.raises(SettingsError, match="HEATMAP_KAFKA_BOOTSTRAP"):
        settings.require_kafka()
    with pytest.raises(SettingsError, match="HEATMAP_CLICKHOUSE_URL"):
        settings.require_clickhouse()
    with pytest.raises(SettingsError, match="HEATMAP_JWT_SECRET"):
        settings.require_auth()
    with pytest.raises(SettingsError, match="HEATMAP_S3_ENDPOINT"):
        settings.require_screenshot_store()


def test_s3_endpoint_without_keys_is_rejected() -> None:
    with pytest.raises(SettingsError, match="HEATMAP_S3_ACCESS_KEY"):
        Settings.from_env({"HEATMAP_S3_ENDPOINT": "http://127.0.0.1:9000"})


def test_secrets_stay_out_of_repr() -> None:
    settings = Settings.from_env(
        {
            "HEATMAP_JWT_SECRET": "very-secret-value",
            "HEATMAP_CLICKHOUSE_URL": "http://u:hunter2@127.0.0.1:8123/db",
        }
    )
    assert "very-secret-value" not in repr(settings)
    assert "hunter2" not in repr(settings)


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.log_level = "DEBUG"  # type: ignore[misc]


def test_public_key_file_is_read(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n")
    settings = Settings.from_env({"HEATMAP_JWT_PUBLIC_KEY_FILE": str(key)})
    assert settings.auth.jwt_public_key is not None
    assert settings.auth.jwt_algorithms == ("RS256", "ES256")
    with pytest.raises(SettingsError, match="HEATMAP_JWT_PUBLIC_KEY_FILE"):
        Settings.from_env({"HEATMAP_JWT_PUBLIC_KEY_FILE": str(tmp_path / "missing.pem")})


def test_worker_group_timings_reach_faust() -> None:
    from stream_workers.app import FaustTuning

    settings = Settings.from_env(
        {
            "HEATMAP_KAFKA_SESSION_TIMEOUT_S": "6",
            "HEATMAP_KAFKA_REBALANCE_TIMEOUT_S": "15",
            "HEATMAP_KAFKA_COMMIT_INTERVAL_S": "0.2",
        }
    )
    tuning = FaustTuning.from_settings(settings)
    assert (tuning.session_timeout_s, tuning.rebalance_timeout_s, tuning.commit_interval_s) == (
        6.0,
        15.0,
        0.2,
    )


# A value each constrained variable must refuse; every variable read from the
# environment with a checkable value appears here once.
BAD_VALUES = {
    "HEATMAP_JWT_PUBLIC_KEY_FILE": "/nonexistent/key.pem",
    "HEATMAP_JWT_ALGORITHMS": "HS256,none",
    "HEATMAP_JWT_LEEWAY_S": "soon",
    "HEATMAP_JWT_JWKS_URL": "ftp://idp",
    "HEATMAP_JWT_JWKS_LIFESPAN_S": "0",
    "HEATMAP_JWT_JWKS_COOLDOWN_S": "-1",
    "HEATMAP_KAFKA_PARTITIONS": "0",
    "HEATMAP_KAFKA_REPLICATION": "-1",
    "HEATMAP_KAFKA_COMPRESSION": "brotli",
    "HEATMAP_PUBLISH_TIMEOUT_S": "inf",
    "HEATMAP_PRODUCER_QUEUE_MAX_MESSAGES": "1.5",
    "HEATMAP_PRODUCER_QUEUE_MAX_KBYTES": "0",
    "HEATMAP_KAFKA_SECURITY_PROTOCOL": "tls",
    "HEATMAP_KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem",
    "HEATMAP_KAFKA_SSL_CERT_FILE": "/nonexistent/cert.pem",
    "HEATMAP_KAFKA_SSL_KEY_FILE": "/nonexistent/key.pem",
    "HEATMAP_KAFKA_SASL_MECHANISM": "GSSAPI",
    "HEATMAP_CLICKHOUSE_URL": "mysql://x",
    "HEATMAP_CLICKHOUSE_DATABASE": "1st",
    "HEATMAP_CLICKHOUSE_MAX_EXECUTION_TIME_S": "0",
    "HEATMAP_CLICKHOUSE_READONLY_URL": "http://127.0.0.1:8123/db",
    "HEATMAP_S3_ENDPOINT": "ftp://127.0.0.1",
    "HEATMAP_S3_PRESIGN_TTL_S": "0",
    "HEATMAP_GRPC_PORT": "-1",
    "HEATMAP_METRICS_PORT": "65536",
    "HEATMAP_GRPC_MAX_MESSAGE_BYTES": "0",
    "HEATMAP_GRPC_MAX_CONCURRENT_RPCS": "many",
    "HEATMAP_SHUTDOWN_GRACE_S": "nan",
    "HEATMAP_FLUSH_INTERVAL_S": "0",
    "HEATMAP_FLUSH_MAX_CELLS": "0",
    "HEATMAP_INSERT_CONCURRENCY": "17",
    "HEATMAP_CLICKHOUSE_RETRY_MAX_S": "-5",
    "HEATMAP_KAFKA_SESSION_TIMEOUT_S": "2.9",
    "HEATMAP_KAFKA_REBALANCE_TIMEOUT_S": "0",
    "HEATMAP_KAFKA_COMMIT_INTERVAL_S": "0",
    "HEATMAP_LEDGER_MEMORY_ENTRIES": "999",
    "HEATMAP_LEDGER_FILTER_MB": "4097",
    "HEATMAP_MAX_EVENT_AGE_S": "34560001",
    "HEATMAP_MAX_PER_USER_POINTS": "0",
    "HEATMAP_MIN_USERS_PER_CELL": "-1",
    "HEATMAP_RENDER_MAX_CONCURRENT": "0",
    "HEATMAP_LOG_LEVEL": "loud",
    "HEATMAP_LOG_FORMAT": "xml",
    "HEATMAP_HTTP_PORT": "65536",
    "HEATMAP_RETENTION_PER_USER_DAYS": "-1",
    "HEATMAP_RETENTION_ALL_USERS_DAYS": "36501",
}
# Variables any text is good for (their rules with other variables are tested apart).
FREE_TEXT = {
    "HEATMAP_JWT_SECRET",
    "HEATMAP_JWT_PUBLIC_KEY",
    "HEATMAP_JWT_AUDIENCE",
    "HEATMAP_JWT_ISSUER",
    "HEATMAP_KAFKA_BOOTSTRAP",
    "HEATMAP_KAFKA_TOPIC",
    "HEATMAP_KAFKA_DLQ_TOPIC",
    "HEATMAP_KAFKA_CONSUMER_GROUP",
    "HEATMAP_KAFKA_SSL_KEY_PASSWORD",
    "HEATMAP_KAFKA_SASL_USERNAME",
    "HEATMAP_KAFKA_SASL_PASSWORD",
    "HEATMAP_S3_ACCESS_KEY",
    "HEATMAP_S3_SECRET_KEY",
    "HEATMAP_S3_BUCKET",
    "HEATMAP_S3_REGION",
    "HEATMAP_GRPC_HOST",
    "HEATMAP_SCREENSHOT_DIR",
    "HEATMAP_DATA_DIR",
}


def test_every_variable_read_has_a_bad_value_here_or_takes_any_text() -> None:
    read = {
        str(f.validation_alias)
        for section in _SECTIONS.values()
        for f in section.model.model_fields.values()
    }
    assert read == BAD_VALUES.keys() | FREE_TEXT


@pytest.mark.parametrize(("name", "value"), sorted(BAD_VALUES.items()))
def test_every_variable_is_named_in_its_error(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({name: value})
    message = str(err.value)
    assert message.startswith(name), message  # the variable first, whatever else it needs
    assert "\n" not in message


def test_every_error_is_reported_at_once_on_one_line() -> None:
    env = {"HEATMAP_KAFKA_PARTITIONS": "zero", "HEATMAP_GRPC_PORT": "70000"}
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    message = str(err.value)
    assert "HEATMAP_KAFKA_PARTITIONS='zero'" in message
    assert "HEATMAP_GRPC_PORT='70000'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEATMAP_CLICKHOUSE_URL", "mysql://heatmap:hunter2@127.0.0.1/db"),
        ("HEATMAP_CLICKHOUSE_READONLY_URL", "chdb:///tmp/hunter2"),
    ],
)
def test_secret_values_stay_out_of_errors(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name) as err:
        Settings.from_env({name: value})
    assert "hunter2" not in str(err.value)


def test_unknown_heatmap_variables_are_ignored() -> None:
    env = {"HEATMAP_KAFKA_PARTITION": "0", "HEATMAP_NOT_A_SETTING": "x", "heatmap_grpc_port": "-1"}
    assert Settings.from_env(env) == Settings.from_env({})


def test_empty_values_mean_unset() -> None:
    every = [*BAD_VALUES, "HEATMAP_JWT_SECRET", "HEATMAP_KAFKA_BOOTSTRAP", "HEATMAP_S3_ENDPOINT"]
    empty = Settings.from_env(dict.fromkeys(every, ""))
    assert empty == Settings.from_env({})
    assert not empty.server.metrics_port_set
    # "" also does not count as set for the rules between variables
    kafka = {"HEATMAP_KAFKA_SASL_USERNAME": "", "HEATMAP_KAFKA_SSL_CA_FILE": ""}
    assert Settings.from_env(kafka).kafka.security_protocol == "plaintext"


def test_building_sections_by_hand_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEATMAP_KAFKA_PARTITIONS", "99")
    monkeypatch.setenv("HEATMAP_LOG_LEVEL", "DEBUG")
    assert Settings().kafka.partitions == 12
    assert Settings().log_level == "INFO"
    assert Settings.from_env().kafka.partitions == 99


def test_metrics_port_set_only_when_given() -> None:
    assert Settings.from_env({"HEATMAP_METRICS_PORT": "9464"}).server.metrics_port_set
    assert not Settings.from_env({}).server.metrics_port_set


def test_retention_defaults_and_overrides() -> None:
    ch = Settings.from_env({}).clickhouse
    assert (ch.retention_per_user_days, ch.retention_all_users_days) == (90, 400)
    ch = Settings.from_env(
        {"HEATMAP_RETENTION_PER_USER_DAYS": "0", "HEATMAP_RETENTION_ALL_USERS_DAYS": "31"}
    ).clickhouse
    assert (ch.retention_per_user_days, ch.retention_all_users_days) == (0, 31)


@pytest.mark.parametrize("name", ["RETENTION_PER_USER_DAYS", "RETENTION_ALL_USERS_DAYS"])
def test_retention_shorter_than_the_accepted_event_age_is_refused(name: str) -> None:
    with pytest.raises(SettingsError, match=f"HEATMAP_{name}: 30 days is not longer"):
        Settings.from_env({f"HEATMAP_{name}": "30"})  # default max event age: 30 days
    with pytest.raises(SettingsError, match=f"HEATMAP_{name}"):
        Settings.from_env({f"HEATMAP_{name}": "-1"})
    ok = Settings.from_env({f"HEATMAP_{name}": "2", "HEATMAP_MAX_EVENT_AGE_S": "86400"})
    assert ok.clickhouse.retention_per_user_days in (2, 90)
