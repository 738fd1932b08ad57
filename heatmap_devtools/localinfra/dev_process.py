"""Run ``heatmap dev`` as a child process and wait until it is SERVING (tests, benches)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heatmap_devtools.localinfra.process import free_port, processes_running, service_env, terminate


class DevProcess:
    """``heatmap dev`` in its own session (process group), so that a test can
    kill the group - or the dev process alone - the way a terminal would.

    ``metrics=True`` leaves ``HEATMAP_METRICS_PORT`` unset: the instance picks
    a free port and prints it (``metrics_url``); otherwise metrics are off.
    The explorer's HTTP port is off unless ``extra_env`` sets
    ``HEATMAP_HTTP_PORT``: two instances must never both want 8080. The demo
    data set is loaded only with ``demo=True``: tests count their own events.
    """

    def __init__(
        self,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
        *,
        metrics: bool = False,
        demo: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_env = extra_env or {}
        self.metrics = metrics
        self.demo = demo
        self._log_start = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-dev.log"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secret(self) -> str:
        return (self.data_dir / "dev-jwt-secret").read_text().strip()

    def start(self, timeout_s: float = 120.0) -> None:
        defaults = {
            "HEATMAP_LOG_FORMAT": "text",
            "HEATMAP_FLUSH_INTERVAL_S": "0.3",
            "HEATMAP_HTTP_PORT": "0",
        }
        if not self.metrics:
            defaults["HEATMAP_METRICS_PORT"] = "0"
        env = service_env(**{**defaults, **self.extra_env})
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "heatmap_cli.cli",
                "dev",
                "--grpc-port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *([] if self.demo else ["--no-demo"]),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait_serving(timeout_s)

    def _wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"heatmap dev exited {self.proc.returncode}:\n{self.log()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"heatmap dev not SERVING after {timeout_s}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def run_log(self) -> str:
        """Everything the latest ``start()`` has logged so far."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    @property
    def metrics_url(self) -> str:
        """The metrics address this run printed in its banner."""
        found = re.search(r"metrics:\s+(http://\S+/metrics)", self.run_log())
        if found is None:
            raise LookupError(f"no metrics address in the banner:\n{self.log()}")
        return found.group(1)

    def broker_jvms(self) -> list[int]:
        """Live Kafka JVMs on this data dir, whoever started them."""
        props = str((self.data_dir / "kafka" / "server.properties").resolve())
        return processes_running("java", props)

    def kill(self, *, group: bool) -> None:
        """SIGKILL the dev process group (as a terminal's kill would) or the dev process alone."""
        assert self.proc is not None
        if group:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def kill_leftovers(self) -> None:
        """For test clean-up: nothing of this instance may outlive the test."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None
        for pid in self.broker_jvms():
            terminate(pid, timeout_s=5)

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
