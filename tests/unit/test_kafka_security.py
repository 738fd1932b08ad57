"""Kafka TLS/SASL settings: validated at start-up, mapped alike for confluent-kafka and faust.

The round trips over a real TLS/SASL broker are in
tests/integration/test_kafka_tls.py; these check the rules and the mapping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol

from heatmap.kafka_security import confluent_config, faust_credentials, ssl_context
from heatmap.settings import KafkaSettings, Settings, SettingsError
from ingest_gateway.publisher import producer_config

BOOTSTRAP = {"HEATMAP_KAFKA_BOOTSTRAP": "127.0.0.1:9092"}


def _settings(**env: str) -> KafkaSettings:
    return Settings.from_env({**BOOTSTRAP, **{"HEATMAP_" + k: v for k, v in env.items()}}).kafka


def test_plaintext_by_default_and_faust_keeps_its_default() -> None:
    kafka = _settings()
    assert kafka.security_protocol == "plaintext"
    assert confluent_config(kafka) == {"security.protocol": "plaintext"}
    assert ssl_context(kafka) is None
    assert faust_credentials(kafka) is None


def test_sasl_ssl_maps_to_both_clients() -> None:
    kafka = _settings(
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="scram-sha-512",
        KAFKA_SASL_USERNAME="gw",
        KAFKA_SASL_PASSWORD="pw",
    )
    assert confluent_config(kafka) == {
        "security.protocol": "sasl_ssl",
        "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "gw",
        "sasl.password": "pw",
    }
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert (credentials.username, credentials.password) == ("gw", "pw")
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None
    assert credentials.ssl_context.check_hostname  # the broker's name is verified


def test_sasl_plaintext_has_no_tls_context() -> None:
    kafka = _settings(
        KAFKA_SECURITY_PROTOCOL="sasl_plaintext",
        KAFKA_SASL_USERNAME="gw",
        KAFKA_SASL_PASSWORD="pw",
    )
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol is AuthProtocol.SASL_PLAINTEXT
    assert credentials.mechanism.value == "PLAIN"
    assert "ssl.endpoint.identification.algorithm" not in confluent_config(kafka)


def test_ssl_files_reach_librdkafka_and_the_gateway_producer() -> None:
    kafka = KafkaSettings(
        bootstrap="127.0.0.1:9093",
        security_protocol="ssl",
        ssl_ca_file=Path("/etc/kafka/ca.pem"),
        ssl_cert_file=Path("/etc/kafka/client.pem"),
        ssl_key_file=Path("/etc/kafka/client.key"),
        ssl_key_password="kp",
    )
    expected = {
        "security.protocol": "ssl",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
        "ssl.key.password": "kp",
    }
    assert confluent_config(kafka) == expected
    assert producer_config(kafka).items() >= expected.items()


def test_ssl_without_files_uses_the_system_trust_store() -> None:
    kafka = _settings(KAFKA_SECURITY_PROTOCOL="ssl")
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, SSLCredentials)
    assert credentials.context.check_hostname
    assert "ssl.ca.location" not in confluent_config(kafka)


def test_secrets_stay_out_of_repr() -> None:
    kafka = _settings(
        KAFKA_SECURITY_PROTOCOL="sasl_ssl",
        KAFKA_SASL_USERNAME="gw",
        KAFKA_SASL_PASSWORD="very-secret",
    )
    assert "very-secret" not in repr(kafka)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "tls"}, "HEATMAP_KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "HEATMAP_KAFKA_SASL_USERNAME"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_USERNAME": "gw"},
            "HEATMAP_KAFKA_SASL_PASSWORD",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
                "KAFKA_SASL_USERNAME": "gw",
                "KAFKA_SASL_PASSWORD": "pw",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
            },
            "HEATMAP_KAFKA_SASL_MECHANISM",
        ),
        ({"KAFKA_SASL_USERNAME": "gw"}, "HEATMAP_KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_MECHANISM": "PLAIN"}, "HEATMAP_KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SSL_KEY_PASSWORD": "kp"}, "HEATMAP_KAFKA_SSL_KEY_PASSWORD"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CA_FILE": "/nonexistent/ca.pem"},
            "HEATMAP_KAFKA_SSL_CA_FILE",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_KEY_PASSWORD": "kp"},
            "HEATMAP_KAFKA_SSL_KEY_PASSWORD",
        ),
        # /dev/null: a readable path, so only the rule under test can refuse it.
        ({"KAFKA_SSL_CA_FILE": "/dev/null"}, "HEATMAP_KAFKA_SSL_CA_FILE"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CERT_FILE": "/dev/null"},
            "HEATMAP_KAFKA_SSL_KEY_FILE",
        ),
    ],
)
def test_bad_or_ignored_options_are_refused_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable):
        _settings(**env)
