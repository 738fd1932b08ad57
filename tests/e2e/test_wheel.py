"""The wheel works outside the repository.

``python -m build --wheel`` from a copy of the source tree, installed into a
new venv elsewhere, run from a directory outside the repo: ``heatmap
migrate`` and ``heatmap dev`` must find their SQL, protos, the Kafka pom and
static files inside the installed package, not in a checkout beside them.
(The runtime Docker image leaves ``heatmap_devtools`` out on purpose; the
wheel carries it, since ``heatmap dev`` needs it.)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heatmap_devtools.localinfra.kafka import KAFKA_VERSION
from heatmap_devtools.localinfra.process import cmdline, free_port, service_env

REPO = Path(__file__).resolve().parents[2]
# A table every migration run creates (templated names, such as one per grid size, left out).
CREATED_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)(?=[\s(])")
STATIC = Path("query_api/explorer/static")

pytestmark = pytest.mark.slow


def repo_files(*patterns: str) -> list[str]:
    """Files of the working tree (tracked, or new and not ignored) matching ``patterns``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *patterns],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the source tree so that the
    build leaves nothing (build/, egg-info) in the checkout other tests use."""
    root = tmp_path_factory.mktemp("wheel-build")
    source = root / "source"
    for name in repo_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    dist = root / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv outside the repo with only the wheel (and its dependencies) in it."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        # --no-compile: byte-compiling every dependency was over half of the
        # install's time here (101 s with, 40 s without, one run each), and
        # imports compile what they use anyway.
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    return venv


def outside_env(**overrides: str) -> dict[str, str]:
    env = service_env(HEATMAP_LOG_FORMAT="json", **overrides)
    # Nothing may reach the checkout but the installed package itself.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def test_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = repo_files("*.sql", "*.proto", "heatmap_devtools/localinfra/kafka-pom.xml")
    if (REPO / STATIC).is_dir():
        wanted += repo_files(f"{STATIC}/")
    assert any(name.endswith(".sql") for name in wanted), "the repo has its migrations"
    assert any(name.endswith(".proto") for name in wanted), "the repo has its contracts"
    missing = [name for name in wanted if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    # The dev runner ships: `heatmap dev` is a command of the installed package.
    assert "heatmap_devtools/localinfra/kafka.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/"))]


def test_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    found = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import heatmap, heatmap_cli, schemas, query_api; "
            "print(*(m.__file__ for m in (heatmap, heatmap_cli, schemas, query_api)))",
        ],
        cwd=tmp_path,
        env=outside_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert len(found) == 4
    for module_file in found:
        assert Path(module_file).resolve().is_relative_to(installed.resolve()), module_file


def test_migrate_outside_the_repo(installed: Path, tmp_path: Path) -> None:
    chdb_path = tmp_path / "chdb"
    env = outside_env(HEATMAP_CLICKHOUSE_URL=f"chdb://{chdb_path}")
    result = subprocess.run(
        [str(installed / "bin" / "heatmap"), "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Read back through chDB itself (another process: one process per path).
    tables = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import sys; from chdb import session; "
            "print(session.Session(sys.argv[1]).query("
            "\"SELECT name FROM system.tables WHERE database = 'heatmap'\", 'CSV'))",
            str(chdb_path),
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    created = set(tables.split())
    wanted = {"schema_migrations"}
    for sql in repo_files("schemas/clickhouse/*.sql"):
        wanted |= set(CREATED_TABLE.findall((REPO / sql).read_text()))
    assert len(wanted) > 1
    assert {f'"{table}"' for table in wanted} <= created, tables


@pytest.fixture
def dev_group() -> Iterator[list[int]]:
    """Pids of the ``heatmap dev`` process groups a test starts; killed if still there."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_dev_outside_the_repo(installed: Path, tmp_path: Path, dev_group: list[int]) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    # An empty tool cache: the Kafka jars are resolved with the pom the wheel carries.
    env = outside_env(HEATMAP_METRICS_PORT="0", HEATMAP_CACHE_DIR=str(tmp_path / "cache"))
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [
            str(installed / "bin" / "heatmap"),
            "dev",
            "--data-dir",
            str(data_dir),
            "--grpc-port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    dev_group.append(proc.pid)

    def dev_log() -> str:
        return (tmp_path / "dev.log").read_text(errors="replace")[-4000:]

    deadline = time.monotonic() + 240
    serving = False
    while not serving and time.monotonic() < deadline and proc.poll() is None:
        serving = health_serving(f"127.0.0.1:{port}")
        time.sleep(0.3)
    assert serving, f"heatmap dev (exit {proc.poll()}) not SERVING:\n{dev_log()}"
    assert (tmp_path / "cache" / f"kafka-{KAFKA_VERSION}" / "libs" / ".complete").exists()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, dev_log()
    assert left_running(proc.pid, data_dir, deadline_s=15) == [], dev_log()


def health_serving(target: str) -> bool:
    # A new channel per try: a kept one backs off between reconnects (up to
    # minutes), long after the server has come up.
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    serving: bool = reply.status == health_pb2.HealthCheckResponse.SERVING
    return serving


def left_running(pgid: int, data_dir: Path, deadline_s: float) -> list[str]:
    """Processes still in ``pgid`` or naming ``data_dir`` (the broker JVM, its
    watchdog), after giving them ``deadline_s`` to go."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            words = cmdline(pid)
            try:
                in_group = os.getpgid(pid) == pgid
            except ProcessLookupError:
                continue
            if in_group or any(str(data_dir) in word for word in words):
                found.append(f"{pid}: {' '.join(words)}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)
