"""Apache Kafka 4.x, single-node KRaft, run from its Maven Central jars."""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from heatmap.localinfra.kafka_listeners import SecureListeners
from heatmap.localinfra.process import ServiceProcess, cache_dir, free_port, port_open

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """The broker's classpath folder, resolved once with Maven into the cache."""
    libs = cache_dir() / f"kafka-{version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise RuntimeError("Kafka needs Java 17+ and Maven (apt-get install openjdk-17-jre maven)")
    pom = resources.files("heatmap.localinfra").joinpath("kafka-pom.xml")
    with resources.as_file(pom) as pom_path:
        logger.info("resolving Kafka %s jars into %s", version, libs)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom_path),
                f"-Dkafka.version={version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            check=True,
        )
    marker.touch()
    return libs


class KafkaBroker:
    """One KRaft broker+controller on 127.0.0.1; data survives ``stop``/``start``."""

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        heap_mb: int = 768,
        secure: SecureListeners | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap_mb = heap_mb
        self.secure = secure
        self.secure_ports = {name: free_port() for name in secure.protocols()} if secure else {}
        self._process: ServiceProcess | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def bootstrap_for(self, protocol: str) -> str:
        """The address of the ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL`` listener."""
        return f"127.0.0.1:{self.secure_ports[protocol]}"

    def _properties(self) -> str:
        extra = "".join(f",{name}://127.0.0.1:{port}" for name, port in self.secure_ports.items())
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}{extra}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}{extra}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
                + "".join(f",{name}:{name}" for name in self.secure_ports),
                *(self.secure.properties() if self.secure else []),
                f"log.dirs={self.data_dir / 'logs'}",
                "num.partitions=1",
                "auto.create.topics.enable=false",
                # A single node: every internal topic has one replica, and few
                # partitions so the first consumer group starts in seconds.
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # KIP-134's first-join delay only slows tests and dev down.
                "group.initial.rebalance.delay.ms=0",
                "group.min.session.timeout.ms=1000",
                "num.network.threads=2",
                "num.io.threads=4",
                "log.retention.hours=168",
                "log.segment.bytes=268435456",
                "",
            ]
        )

    def start(self, timeout_s: float = 60.0) -> None:
        libs = ensure_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._properties())
        classpath = f"{libs}/*"
        if not (self.data_dir / "logs" / "meta.properties").exists():
            subprocess.run(
                [
                    "java",
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    _kafka_uuid(),
                    "-c",
                    str(props),
                ],
                check=True,
                capture_output=True,
                cwd=self.data_dir,
            )
            logger.debug("formatted KRaft storage in %s", self.data_dir)
        self._process = ServiceProcess(
            "kafka",
            [
                "java",
                "-Xms128m",
                f"-Xmx{self.heap_mb}m",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ],
            self.data_dir / "kafka.log",
            cwd=self.data_dir,
        )
        self._process.wait_ready(self._ready, timeout_s)
        logger.info("kafka ready at %s (pid %s)", self.bootstrap, self._process.pid)

    def _ready(self) -> bool:
        if not port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except Exception:
            return False
        return bool(metadata.brokers)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
