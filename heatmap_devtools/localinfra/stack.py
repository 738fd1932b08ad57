"""``heatmap infra up|down|status``: the local Kafka and S3 server as background daemons.

Used by benchmarks and by hand; tests and ``heatmap dev`` start their own
services in-process instead and stop them on exit. State (pids, ports,
credentials) lives in ``<data-dir>/infra.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from heatmap_devtools.localinfra.kafka import KafkaBroker
from heatmap_devtools.localinfra.seaweedfs import SeaweedS3


def default_dir() -> Path:
    return Path(os.environ.get("HEATMAP_INFRA_DIR") or Path.home() / ".local/state/heatmap-infra")


def up(root: Path) -> dict[str, str]:
    state = status(root)
    if state.get("running") == "yes":
        return state
    # Daemons: they outlive this command, so no watchdog ties them to it.
    kafka = KafkaBroker(root / "kafka", die_with_parent=False)
    s3 = SeaweedS3(root / "s3")
    # Generous: `up` is run on loaded machines (benches, CI) and only once.
    kafka.start(timeout_s=120)
    try:
        s3.start(timeout_s=120)
    except Exception:
        kafka.stop()
        raise
    info = {
        "HEATMAP_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "HEATMAP_S3_ENDPOINT": s3.endpoint,
        "HEATMAP_S3_ACCESS_KEY": s3.credentials.access_key,
        "HEATMAP_S3_SECRET_KEY": s3.credentials.secret_key,
        "kafka_pid": str(kafka.pid),
        "s3_pid": str(s3._process.pid if s3._process else ""),
    }
    # Detach: the daemons outlive this command; `down` stops them by pid.
    kafka._process = None
    s3._process = None
    (root / "infra.json").write_text(json.dumps(info, indent=2))
    return {**info, "running": "yes"}


def status(root: Path) -> dict[str, str]:
    path = root / "infra.json"
    if not path.exists():
        return {"running": "no"}
    info: dict[str, str] = json.loads(path.read_text())
    alive = all(_alive(int(info[k])) for k in ("kafka_pid", "s3_pid") if info.get(k))
    return {**info, "running": "yes" if alive else "no"}


def down(root: Path) -> None:
    info = status(root)
    for key in ("s3_pid", "kafka_pid"):
        if info.get(key):
            _terminate(int(info[key]))
    with contextlib.suppress(FileNotFoundError):
        (root / "infra.json").unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _terminate(pid: int, timeout_s: float = 15.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
