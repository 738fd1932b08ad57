"""Apache Kafka 4.x, single-node KRaft, run from its Maven Central jars."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import uuid
from importlib import resources
from pathlib import Path

from heatmap_devtools.localinfra.kafka_listeners import SecureListeners
from heatmap_devtools.localinfra.process import (
    ServiceProcess,
    cache_dir,
    free_port,
    port_open,
    processes_running,
    read_pid_file,
    terminate,
)

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
    pom = resources.files("heatmap_devtools.localinfra").joinpath("kafka-pom.xml")
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
    """One KRaft broker+controller on 127.0.0.1; data survives ``stop``/``start``.

    By default the broker dies with the process that started it, however
    that process dies (``die_with_parent``: see ``heatmap_devtools.localinfra.watchdog``);
    ``heatmap infra up`` turns that off for its daemon. ``broker.pid`` in the
    data dir names the running JVM, so that a start after a crash finds a
    broker or a lock left behind and clears it (``_clear_leftovers``).
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        heap_mb: int = 768,
        secure: SecureListeners | None = None,
        die_with_parent: bool = True,
    ) -> None:
        # Absolute: the JVM's command line names it, and is how a broker left
        # running is recognised as this data dir's.
        self.data_dir = data_dir.resolve()
        self.die_with_parent = die_with_parent
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
        self._clear_leftovers()
        props = self._props_path
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
            pid_file=self._pid_file,
            die_with_parent=self.die_with_parent,
        )
        self._process.wait_ready(self._ready, timeout_s)
        logger.info("kafka ready at %s (pid %s)", self.bootstrap, self._process.service_pid)

    @property
    def _props_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    def _clear_leftovers(self) -> None:
        """Stop a broker an earlier crash left running on this data dir, or clear its lock.

        Such a broker holds the log dir's lock, and a new one would exit with a
        lock exception. It is found by the pid file, or - for one that predates
        pid files - by its command line naming this data dir's properties.
        Only a broker whose starter is gone is stopped: a live starter means
        the data dir is in use, which is an error, not a leftover.
        """
        record = read_pid_file(self._pid_file)
        leftovers = set(processes_running("java", str(self._props_path)))
        if record is not None and record.alive():
            leftovers.add(record.pid)
        for pid in sorted(leftovers):
            if record is not None and record.pid == pid and record.owner_alive():
                raise DataDirInUse(
                    f"{self.data_dir}: in use by the Kafka broker pid {pid}, "
                    f"started by pid {record.owner_pid}, which is still running"
                )
            logger.warning(
                "kafka: stopping broker pid %d left running on %s by an earlier crash",
                pid,
                self.data_dir,
            )
            terminate(pid)
        lock = self.data_dir / "logs" / ".lock"
        if lock_is_held(lock):
            raise DataDirInUse(f"{lock}: locked by another process (not a broker of this dir)")
        if record is not None and not leftovers:
            logger.warning(
                "kafka: cleared the pid file and lock of broker pid %d on %s (crashed, gone)",
                record.pid,
                self.data_dir,
            )
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()

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
        """The JVM's pid (not its watchdog's)."""
        return self._process.service_pid if self._process else None


class DataDirInUse(RuntimeError):
    """Another live process uses this broker data dir."""


def lock_is_held(path: Path) -> bool:
    """Whether some process holds Kafka's lock on ``path`` (a POSIX ``fcntl`` lock,
    as Java's ``FileChannel.tryLock`` takes it)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases our probe lock
    return False


def _kafka_uuid() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Never starting with "-" (1 in 64 would): the storage tool would take it for
    an option and fail, and Kafka's own ``Uuid.randomUuid`` redraws those too."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
