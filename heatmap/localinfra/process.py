"""Child-process handling shared by the local service launchers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def cache_dir() -> Path:
    """Where downloads and builds are kept between runs (outside the repo)."""
    root = Path(os.environ.get("HEATMAP_CACHE_DIR") or Path.home() / ".cache" / "heatmap")
    root.mkdir(parents=True, exist_ok=True)
    return root


def service_env(**overrides: str) -> dict[str, str]:
    """The environment for a child ``heatmap`` process: ours without any
    ``HEATMAP_*`` setting (so a developer's shell cannot leak into a test or
    bench), keeping the tooling cache dir, plus ``overrides``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HEATMAP_") or k == "HEATMAP_CACHE_DIR"
    }
    env.update(overrides)
    return env


def free_port() -> int:
    """A free loopback port for a server we are about to start.

    Chosen below the kernel's ephemeral range: a port-0 pick comes from that
    range, and between the pick and the server's bind any outgoing connection
    on the machine (tests open thousands) may take it. Listeners are rare, so
    a random port below the range that binds now stays free.
    """
    low = _ephemeral_low()
    for _ in range(50):
        port = random.randint(max(10_000, low - 12_000), low - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        fallback: int = s.getsockname()[1]
        return fallback


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return low if low > 11_000 else 32_768


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class ServiceProcess:
    """A started child process with its log file; ``stop()`` never leaves it running."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C is handled by us, not sent to it
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} during start-up; "
                    f"log tail:\n{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s; log:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
