"""Optional secured listeners for the local broker: SSL, SASL_PLAINTEXT, SASL_SSL on loopback.

For trying out (and testing) the clients' TLS and SASL settings against a real
broker. The PLAINTEXT listener stays beside them: the broker's readiness
probe and its inter-broker traffic use it, and so can a test that sets up
SCRAM users through the admin API. Key material is PEM, inline in
``server.properties`` (Kafka's PEM key stores, KIP-651), so no JKS tooling
is needed. Every option is prefixed with its listener name, so one listener's
settings never leak into another's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: SASL mechanisms the SASL listeners accept. PLAIN users come from the
#: listener's JAAS line; SCRAM users are created through the admin API
#: (``AdminClient.alter_user_scram_credentials``) once the broker runs.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class BrokerTls:
    certificate_chain: str  # PEM: the broker's certificate first, then its CA's
    private_key: str  # PEM, PKCS#8, not encrypted
    trusted_certificates: str  # PEM: the CA that client certificates must chain to
    client_auth: str = "required"  # Kafka's ssl.client.auth: required, requested or none


@dataclass(frozen=True)
class SecureListeners:
    """Which secured listeners to open: SSL with ``tls``, SASL ones with ``plain_users``."""

    tls: BrokerTls | None = None
    plain_users: Mapping[str, str] | None = None  # SASL/PLAIN user -> password

    def protocols(self) -> tuple[str, ...]:
        names = []
        if self.tls is not None:
            names.append("SSL")
        if self.plain_users is not None:
            names.append("SASL_PLAINTEXT")
            if self.tls is not None:
                names.append("SASL_SSL")
        return tuple(names)

    def properties(self) -> list[str]:
        lines = []
        for protocol in self.protocols():
            prefix = f"listener.name.{protocol.lower()}."
            if protocol.endswith("SSL") and self.tls is not None:
                lines += _tls_lines(prefix, self.tls, client_auth=protocol == "SSL")
            if protocol.startswith("SASL_"):
                lines += _sasl_lines(prefix, self.plain_users or {})
        return lines


def _tls_lines(prefix: str, tls: BrokerTls, *, client_auth: bool) -> list[str]:
    return [
        f"{prefix}ssl.keystore.type=PEM",
        f"{prefix}ssl.keystore.certificate.chain={_one_line(tls.certificate_chain)}",
        f"{prefix}ssl.keystore.key={_one_line(tls.private_key)}",
        f"{prefix}ssl.truststore.type=PEM",
        f"{prefix}ssl.truststore.certificates={_one_line(tls.trusted_certificates)}",
        # SASL_SSL authenticates by password: a client certificate is not asked for.
        f"{prefix}ssl.client.auth={tls.client_auth if client_auth else 'none'}",
    ]


def _sasl_lines(prefix: str, plain_users: Mapping[str, str]) -> list[str]:
    for text in (*plain_users, *plain_users.values()):
        if any(c in text for c in '"\\\n;') or not text:
            raise ValueError("SASL user names and passwords: no quotes, backslashes or ';'")
    users = " ".join(f'user_{name}="{password}"' for name, password in plain_users.items())
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return [
        f"{prefix}sasl.enabled.mechanisms={','.join(SASL_MECHANISMS)}",
        f"{prefix}plain.sasl.jaas.config="
        f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
        f"{prefix}scram-sha-256.sasl.jaas.config={scram}",
        f"{prefix}scram-sha-512.sasl.jaas.config={scram}",
    ]


def _one_line(pem: str) -> str:
    """A PEM block as one properties value (``\\n`` is a newline to Java's Properties)."""
    return pem.strip().replace("\r", "").replace("\n", "\\n")
