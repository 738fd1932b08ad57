from __future__ import annotations

from pathlib import Path

import pytest

from heatmap.settings import Settings, SettingsError


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
