"""Kafka client security (TLS, SASL) from ``KafkaSettings``, one mapping for every client.

The gateway's producer and the topic admin are confluent-kafka (librdkafka
configuration keys); the worker's consumer and producer are aiokafka under
faust (an ``ssl.SSLContext`` and SASL arguments, handed to faust as
``broker_credentials``). Both mappings are made here from the same settings,
so a deployment cannot end up with one client on TLS and another in clear.

Broker hostname verification stays on in both (librdkafka's
``ssl.endpoint.identification.algorithm=https``, ``check_hostname`` in the
Python context): the broker's certificate must name the address the client
dials, which is what stops a man in the middle holding any certificate of
the same CA. Without ``ssl_ca_file`` both use the system trust store.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from heatmap.settings import KafkaSettings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

TLS_PROTOCOLS = frozenset({"ssl", "sasl_ssl"})
SASL_PROTOCOLS = frozenset({"sasl_plaintext", "sasl_ssl"})


def confluent_config(settings: KafkaSettings) -> dict[str, str]:
    """librdkafka keys for ``Producer``/``Consumer``/``AdminClient`` configuration."""
    protocol = settings.security_protocol
    config = {"security.protocol": protocol}
    if protocol in TLS_PROTOCOLS:
        config["ssl.endpoint.identification.algorithm"] = "https"
        if settings.ssl_ca_file is not None:
            config["ssl.ca.location"] = str(settings.ssl_ca_file)
        if settings.ssl_cert_file is not None and settings.ssl_key_file is not None:
            config["ssl.certificate.location"] = str(settings.ssl_cert_file)
            config["ssl.key.location"] = str(settings.ssl_key_file)
        if settings.ssl_key_password is not None:
            config["ssl.key.password"] = settings.ssl_key_password
    if protocol in SASL_PROTOCOLS:
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username or ""
        config["sasl.password"] = settings.sasl_password or ""
    return config


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context aiokafka connects with, or None for plaintext protocols."""
    if settings.security_protocol not in TLS_PROTOCOLS:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(settings.ssl_ca_file) if settings.ssl_ca_file is not None else None,
    )
    if settings.ssl_cert_file is not None and settings.ssl_key_file is not None:
        context.load_cert_chain(
            settings.ssl_cert_file, settings.ssl_key_file, password=settings.ssl_key_password
        )
    return context


def faust_credentials(settings: KafkaSettings) -> CredentialsT | None:
    """``broker_credentials`` for ``faust.App``: None keeps faust's plaintext default."""
    from faust.auth import SASLCredentials, SSLCredentials

    context = ssl_context(settings)
    if settings.security_protocol in SASL_PROTOCOLS:
        # SASLCredentials picks SASL_SSL itself when given a context.
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            ssl_context=context,
            mechanism=settings.sasl_mechanism,
        )
    if context is not None:
        return SSLCredentials(context)
    return None
