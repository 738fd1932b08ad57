"""Kafka TLS and SASL end to end: a broker of its own with secured listeners, a self-signed CA.

The session's broker stays plaintext; this module starts (and always stops)
one with an SSL listener that demands client certificates, a SASL_SSL and a
SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256/512). For each protocol the
client settings come from HEATMAP_* variables through ``Settings.from_env``,
then: the topic admin creates the topics, the gateway's publisher publishes
touch batches and one undecodable message, and a real stream worker (faust
over aiokafka) consumes them into ClickHouse and dead-letters the bad one
with its own producer. Every client talks only to the secured port, so a
client that fell back to plaintext, or lost its certificate or password on
the way, could not have done its part. The refusals at the end show that the
broker does enforce each of those.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from heatmap.kafka_admin import ensure_topics
from heatmap.settings import ClickHouseSettings, Settings, WorkerSettings
from heatmap_devtools.localinfra.kafka import KafkaBroker
from heatmap_devtools.localinfra.kafka_listeners import BrokerTls, SecureListeners
from ingest_gateway.publisher import KafkaPublisher
from schemas.touch_batch import encode_batch
from stream_workers.app import FaustTuning, Worker
from tests.conftest import unique
from tests.worker_support import (
    TABLE_KEYS,
    CellKey,
    as_counter,
    expected_counts,
    fleet_batches,
    read_messages,
    stored_counts_sql,
)

PLAIN_USER, PLAIN_PASSWORD = "gateway", "plain-secret-1"
SCRAM_USER, SCRAM_PASSWORD = "worker", "scram-secret-2"
KEY_PASSWORD = "client-key-secret-3"
FAST = FaustTuning(session_timeout_s=6.0, rebalance_timeout_s=15.0, commit_interval_s=0.2)


# ------------------------------------------------------------------ PKI


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    client_cert_file: Path
    client_key_file: Path  # encrypted with KEY_PASSWORD
    other_ca_file: Path  # a CA that signed nothing here
    broker: BrokerTls


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    cert = _certificate(
        name, key, None, [(x509.BasicConstraints(ca=True, path_length=0), True), (usage, True)]
    )
    return cert, key


def _leaf(
    name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        ),
    ]
    if server:
        # The clients verify the broker's name: it must cover the address they dial.
        alt = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        extensions.append((x509.SubjectAlternativeName(alt), False))
    return _certificate(name, key, (ca[0].subject, ca[1]), extensions), key


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_pki(directory: Path) -> Pki:
    ca = _ca("heatmap test CA")
    broker_cert, broker_key = _leaf("kafka broker", ca, server=True)
    client_cert, client_key = _leaf("heatmap client", ca, server=False)
    other_ca, _ = _ca("unrelated CA")
    files = {
        "ca.pem": _pem(ca[0]),
        "other-ca.pem": _pem(other_ca),
        "client.pem": _pem(client_cert),
        "client.key": client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        ).decode(),
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    broker = BrokerTls(
        certificate_chain=_pem(broker_cert) + _pem(ca[0]),
        private_key=broker_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        trusted_certificates=_pem(ca[0]),
        client_auth="required",
    )
    return Pki(
        directory / "ca.pem",
        directory / "client.pem",
        directory / "client.key",
        directory / "other-ca.pem",
        broker,
    )


# --------------------------------------------------------------- broker


@dataclass(frozen=True)
class SecureKafka:
    broker: KafkaBroker
    pki: Pki


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    root = tmp_path_factory.mktemp("kafka-tls")
    pki = make_pki(root)
    broker = KafkaBroker(
        root / "broker",
        heap_mb=512,
        secure=SecureListeners(tls=pki.broker, plain_users={PLAIN_USER: PLAIN_PASSWORD}),
    )
    try:
        broker.start()
        # SCRAM users live in the cluster metadata: create them over the
        # plaintext listener, as an operator would with kafka-configs.sh.
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        upsert = UserScramCredentialUpsertion(
            SCRAM_USER,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
            SCRAM_PASSWORD.encode(),
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=30)
        yield SecureKafka(broker, pki)
    finally:
        broker.stop()


def client_env(kafka: SecureKafka, case: str) -> dict[str, str]:
    """HEATMAP_* variables of one client configuration."""
    pki = kafka.pki
    if case == "ssl-client-certificate":
        return {
            "HEATMAP_KAFKA_BOOTSTRAP": kafka.broker.bootstrap_for("SSL"),
            "HEATMAP_KAFKA_SECURITY_PROTOCOL": "ssl",
            "HEATMAP_KAFKA_SSL_CA_FILE": str(pki.ca_file),
            "HEATMAP_KAFKA_SSL_CERT_FILE": str(pki.client_cert_file),
            "HEATMAP_KAFKA_SSL_KEY_FILE": str(pki.client_key_file),
            "HEATMAP_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
        }
    if case == "sasl_ssl-scram-sha-512":
        return {
            "HEATMAP_KAFKA_BOOTSTRAP": kafka.broker.bootstrap_for("SASL_SSL"),
            "HEATMAP_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "HEATMAP_KAFKA_SSL_CA_FILE": str(pki.ca_file),
            "HEATMAP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "HEATMAP_KAFKA_SASL_USERNAME": SCRAM_USER,
            "HEATMAP_KAFKA_SASL_PASSWORD": SCRAM_PASSWORD,
        }
    if case == "sasl_plaintext-plain":
        return {
            "HEATMAP_KAFKA_BOOTSTRAP": kafka.broker.bootstrap_for("SASL_PLAINTEXT"),
            "HEATMAP_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext",
            "HEATMAP_KAFKA_SASL_MECHANISM": "PLAIN",
            "HEATMAP_KAFKA_SASL_USERNAME": PLAIN_USER,
            "HEATMAP_KAFKA_SASL_PASSWORD": PLAIN_PASSWORD,
        }
    raise AssertionError(case)


# ---------------------------------------------------------------- round trip


async def wait_for_cells(
    client: Client, expected: dict[str, Counter[CellKey]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    got: dict[str, Counter[CellKey]] = {}
    while time.monotonic() < deadline:
        got = {
            table: as_counter(client.query(stored_counts_sql(table)).result_rows)
            for table in TABLE_KEYS
        }
        if got == expected:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"cells never matched: {got}")


@pytest.mark.parametrize(
    "case", ["ssl-client-certificate", "sasl_ssl-scram-sha-512", "sasl_plaintext-plain"]
)
async def test_admin_publisher_and_worker_round_trip_over_the_secured_listener(
    secure_kafka: SecureKafka, clickhouse: ClickHouseSettings, client: Client, case: str
) -> None:
    topic = unique("tls")
    env = {
        **client_env(secure_kafka, case),
        "HEATMAP_KAFKA_TOPIC": topic,
        "HEATMAP_KAFKA_DLQ_TOPIC": topic + "-dlq",
        "HEATMAP_KAFKA_PARTITIONS": "3",
        "HEATMAP_KAFKA_CONSUMER_GROUP": "g-" + topic,
    }
    settings = replace(
        Settings.from_env(env),
        clickhouse=clickhouse,
        worker=WorkerSettings(
            flush_interval_s=0.3, flush_max_cells=20_000, clickhouse_retry_max_s=1
        ),
    )

    # The admin creates both topics through the secured listener.
    await asyncio.to_thread(ensure_topics, settings.kafka, 20.0)
    listed = AdminClient({"bootstrap.servers": secure_kafka.broker.bootstrap}).list_topics(
        timeout=10
    )
    assert len(listed.topics[topic].partitions) == 3
    assert topic + "-dlq" in listed.topics

    batches = fleet_batches(6, 40)
    publisher = KafkaPublisher(settings.kafka)
    await publisher.start()
    try:
        for batch in batches:
            await publisher.publish(batch.user_id.encode(), encode_batch(batch))
        await publisher.publish(b"poison-user", b"not a touch batch")
        assert publisher.healthy()
    finally:
        await publisher.stop()

    worker = Worker(settings, CollectorRegistry(), client, tuning=FAST)
    await worker.start()
    try:
        await wait_for_cells(client, expected_counts(batches), timeout_s=60)
    finally:
        await worker.stop()
    # The worker's own producer delivered the dead letter over the same listener.
    dead = await asyncio.to_thread(
        read_messages, secure_kafka.broker.bootstrap, topic + "-dlq", 15.0
    )
    assert [m.value() for m in dead] == [b"not a touch batch"]


# ---------------------------------------------------------------- refusals


def _refused(secure_kafka: SecureKafka, case: str, **changes: str | None) -> None:
    env = {**client_env(secure_kafka, case), "HEATMAP_KAFKA_TOPIC": unique("refused")}
    for key, value in changes.items():
        name = "HEATMAP_KAFKA_" + key
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    settings = Settings.from_env(env)
    with pytest.raises(KafkaException):
        ensure_topics(settings.kafka, timeout_s=4.0)


def test_the_tls_listener_refuses_plaintext_clients(secure_kafka: SecureKafka) -> None:
    _refused(
        secure_kafka,
        "ssl-client-certificate",
        SECURITY_PROTOCOL=None,
        SSL_CA_FILE=None,
        SSL_CERT_FILE=None,
        SSL_KEY_FILE=None,
        SSL_KEY_PASSWORD=None,
    )


def test_the_tls_listener_refuses_a_client_without_its_certificate(
    secure_kafka: SecureKafka,
) -> None:
    _refused(
        secure_kafka,
        "ssl-client-certificate",
        SSL_CERT_FILE=None,
        SSL_KEY_FILE=None,
        SSL_KEY_PASSWORD=None,
    )


def test_clients_refuse_a_broker_their_ca_did_not_sign(secure_kafka: SecureKafka) -> None:
    _refused(
        secure_kafka, "sasl_ssl-scram-sha-512", SSL_CA_FILE=str(secure_kafka.pki.other_ca_file)
    )


@pytest.mark.parametrize("case", ["sasl_ssl-scram-sha-512", "sasl_plaintext-plain"])
def test_sasl_listeners_refuse_a_wrong_password(secure_kafka: SecureKafka, case: str) -> None:
    _refused(secure_kafka, case, SASL_PASSWORD="wrong-password")
