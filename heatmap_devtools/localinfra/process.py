"""Child-process handling shared by the local service launchers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ProcessRecord:
    """A process as a pid file remembers it: the pid plus its kernel start time
    (a recycled pid has another), and the process that started it."""

    pid: int
    start_ticks: int
    owner_pid: int
    owner_start_ticks: int

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks

    def owner_alive(self) -> bool:
        return start_ticks(self.owner_pid) == self.owner_start_ticks


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # exited, not yet reaped: as good as gone
        return None
    return int(fields[19])


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes_running(program: str, argument: str) -> list[int]:
    """Live processes (ours or not) running ``program`` with ``argument`` among its words."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        words = cmdline(int(entry.name))
        if words and Path(words[0]).name == program and argument in words[1:]:
            found.append(int(entry.name))
    return found


def write_pid_file(path: Path, pid: int, owner_pid: int) -> None:
    record = {
        "pid": pid,
        "start_ticks": start_ticks(pid),
        "owner_pid": owner_pid,
        "owner_start_ticks": start_ticks(owner_pid),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def read_pid_file(path: Path) -> ProcessRecord | None:
    try:
        data = json.loads(path.read_text())
        return ProcessRecord(
            int(data["pid"]),
            int(data["start_ticks"]),
            int(data["owner_pid"]),
            int(data["owner_start_ticks"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def terminate(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM a process that need not be our child, SIGKILL it after ``timeout_s``."""
    started = start_ticks(pid)
    if started is None:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if start_ticks(pid) != started:
                return
            time.sleep(0.1)
    raise RuntimeError(f"pid {pid} survived SIGKILL")


class ServiceProcess:
    """A started child process with its log file; ``stop()`` never leaves it running.

    With ``die_with_parent`` the service runs under ``heatmap_devtools.localinfra.watchdog``,
    which stops it however this process ends (SIGKILL included); without it
    (daemons that must outlive their starter) it is an ordinary child. Either
    way ``pid_file`` records the service's own pid for the next start to find.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path,
        *,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.pid_file = pid_file
        self._watched = die_with_parent
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        command = list(argv)
        if die_with_parent:
            wrapper = [sys.executable, "-m", "heatmap_devtools.localinfra.watchdog"]
            if pid_file is not None:
                wrapper += ["--pid-file", str(pid_file), "--owner-pid", str(os.getpid())]
            command = [*wrapper, "--", *command]
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # The watchdog's stdin is a pipe only we hold the write end of.
            stdin=subprocess.PIPE if die_with_parent else subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C is handled by us, not sent to it
        )
        if pid_file is not None and not die_with_parent:
            write_pid_file(pid_file, self.proc.pid, os.getpid())

    @property
    def pid(self) -> int:
        """The process group leader (the watchdog, when there is one)."""
        return self.proc.pid

    @property
    def service_pid(self) -> int:
        """The service's own pid (what to measure or SIGSTOP), not its watchdog's."""
        if not self._watched or self.pid_file is None:
            return self.proc.pid
        # The watchdog writes its child's pid right after starting it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.alive():
            record = read_pid_file(self.pid_file)
            if record is not None and record.owner_pid == os.getpid():
                return record.pid
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: its watchdog wrote no pid file {self.pid_file}")

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
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
