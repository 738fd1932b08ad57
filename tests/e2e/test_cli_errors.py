"""The ``heatmap`` command as a user runs it against a real ``heatmap dev``:
an expected failure is one line on stderr with exit code 1 or 2, never a
traceback; off a terminal loadgen prints one JSON summary and no progress bar;
on a terminal ``heatmap dev`` logs readable lines unless told JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.process import free_port, service_env
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

pytestmark = pytest.mark.slow

DEV = [sys.executable, "-m", "heatmap_cli.cli", "dev"]
WRONG_SECRET = "not-the-secret-of-this-heatmap-dev-0123456789"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    # No explorer port: its default (8080) may be taken by another instance.
    process = DevProcess(tmp_path_factory.mktemp("dev") / "data", {"HEATMAP_HTTP_PORT": "0"})
    process.start()
    try:
        yield process
    finally:
        process.stop()


def heatmap(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The user's environment: no HEATMAP_* at all, logs left to their default.
    return subprocess.run(
        [sys.executable, "-m", "heatmap_cli.cli", *args],
        env=service_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_demo_with_another_dev_data_dir_says_which_data_dir_to_pass(
    dev: DevProcess, tmp_path: Path
) -> None:
    other = tmp_path / "other-dev"
    other.mkdir()
    (other / "dev-jwt-secret").write_text(WRONG_SECRET)
    result = heatmap(
        "demo", "--target", dev.target, "--data-dir", str(other), "--out", "png", cwd=tmp_path
    )
    line = one_line_error(result, 1)
    assert line.startswith("the server rejected the token")
    assert "pass --data-dir of the running heatmap dev (or --token-secret)" in line
    assert not list((tmp_path / "png").glob("*.png"))


def test_demo_without_a_secret_anywhere_is_a_configuration_error(tmp_path: Path) -> None:
    result = heatmap("demo", "--data-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    line = one_line_error(result, 2)
    assert "nowhere/dev-jwt-secret does not exist" in line
    assert "--data-dir" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--token-secret", WRONG_SECRET],
        ["loadgen", "--token-secret", WRONG_SECRET, "--duration", "1"],
        ["render", "--screen", "Home", "--out", "x.png", "--token", "t"],
    ],
    ids=lambda argv: argv[0],
)
def test_no_server_at_the_target_is_one_line(argv: list[str], tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    result = heatmap(*argv, "--target", target, cwd=tmp_path)
    line = one_line_error(result, 1)
    assert line == f"no heatmap server at {target}: start `heatmap dev` or pass --target"


def test_render_with_a_foreign_token_is_one_line(dev: DevProcess, tmp_path: Path) -> None:
    token = mint_token(WRONG_SECRET, "analyst", [VIEW_HEATMAPS])
    result = heatmap(
        "render",
        "--target",
        dev.target,
        "--screen",
        "Home",
        "--out",
        "x.png",
        "--token",
        token,
        cwd=tmp_path,
    )
    line = one_line_error(result, 1)
    assert line.startswith("the server rejected the token")
    assert not (tmp_path / "x.png").exists()


def test_render_error_from_the_server_is_one_line(dev: DevProcess, tmp_path: Path) -> None:
    token = mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])
    result = heatmap(
        "render",
        "--target",
        dev.target,
        "--screen",
        "Home",
        "--out",
        "x.png",
        "--token",
        token,
        "--grid-size",
        "100",  # not a power of two: INVALID_ARGUMENT
        cwd=tmp_path,
    )
    line = one_line_error(result, 1)
    assert line.startswith(f"heatmap render: the server at {dev.target} answered INVALID_ARGUMENT")
    assert "grid_size" in line


def test_loadgen_with_a_foreign_secret_counts_every_call_unauthenticated(
    dev: DevProcess, tmp_path: Path
) -> None:
    result = heatmap(
        "loadgen",
        "--target",
        dev.target,
        "--token-secret",
        WRONG_SECRET,
        "--rate",
        "2000",
        "--duration",
        "1",
        "--batch-size",
        "50",
        "--devices",
        "10",
        "--concurrency",
        "2",
        cwd=tmp_path,
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    summary = json.loads(result.stdout.strip())
    assert summary["sent_requests"] > 0
    assert summary["accepted_events"] == 0
    assert summary["rejected"] == {"UNAUTHENTICATED": summary["sent_requests"]}
    assert "pass --token-secret of the running heatmap dev" in result.stderr.splitlines()[-1]


def test_loadgen_off_a_terminal_prints_one_json_summary_and_no_progress_bar(
    dev: DevProcess, tmp_path: Path
) -> None:
    begun = time.monotonic()
    result = heatmap(
        "loadgen",
        "--target",
        dev.target,
        "--token-secret",
        dev.secret,
        "--rate",
        "5000",
        "--duration",
        "2",
        "--batch-size",
        "100",
        "--devices",
        "20",
        "--concurrency",
        "4",
        cwd=tmp_path,
    )
    wall = time.monotonic() - begun
    assert result.returncode == 0, result.stderr
    stdout = result.stdout.splitlines()
    assert len(stdout) == 1, result.stdout
    summary = json.loads(stdout[0])
    assert summary["offered_events"] == 10_000
    assert 0 < summary["accepted_events"] <= summary["sent_events"] <= 10_000
    assert summary["elapsed_s"] < 2 + 2  # --duration plus the default --grace
    assert "ev/s" not in result.stderr
    assert "\r" not in result.stderr
    assert wall < 60, wall  # start-up (templates, tokens) included


def test_render_takes_the_query_filters(dev: DevProcess, tmp_path: Path) -> None:
    hour = (int(time.time()) - 86_400) // 3600 * 3600

    def ts(seconds: int) -> Timestamp:
        stamp = Timestamp()
        stamp.FromSeconds(seconds)
        return stamp

    with grpc.insecure_channel(dev.target) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for user in ("u-1", "u-2"):
            stub.IngestTouchEvents(
                heatmap_pb2.IngestTouchEventsRequest(
                    events=[
                        heatmap_pb2.TouchEvent(
                            screen_name="CliFilters",
                            x=0.2,
                            y=0.2,
                            event_type=kind,
                            timestamp=ts(hour + 60),
                        )
                        for kind in (heatmap_pb2.TAP, heatmap_pb2.SCROLL)
                    ]
                ),
                metadata=(("authorization", "Bearer " + mint_token(dev.secret, user, [])),),
                timeout=30,
            )
        analyst = (
            (
                "authorization",
                "Bearer " + mint_token(dev.secret, "a", [VIEW_HEATMAPS, MANAGE_HEATMAPS]),
            ),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reply = stub.QueryHeatmapData(
                heatmap_pb2.QueryHeatmapDataRequest(screen_name="CliFilters"), metadata=analyst
            )
            if reply.total_count == 4:
                break
            time.sleep(0.3)
        assert reply.total_count == 4

    token = mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour + 3600))
    common = ["render", "--target", dev.target, "--screen", "CliFilters", "--token", token]
    filtered = heatmap(
        *common,
        "--out",
        "f.png",
        "--mode",
        "per-user",
        "--user",
        "u-1",
        "--event-types",
        "tap",
        "--start",
        start,
        "--end",
        end,
        cwd=tmp_path,
    )
    assert filtered.returncode == 0, filtered.stderr
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")
    # A time range without the events renders too (an empty heatmap), and the
    # filters reached the server: a bad range is the server's INVALID_ARGUMENT.
    backwards = heatmap(*common, "--out", "b.png", "--start", end, "--end", start, cwd=tmp_path)
    line = one_line_error(backwards, 1)
    assert "INVALID_ARGUMENT" in line


def _first_output_on_a_terminal(
    data_dir: Path, env: dict[str, str], until: bytes, timeout_s: float = 60.0
) -> bytes:
    """Run ``heatmap dev`` with a pseudo-terminal as stdout and stderr until
    ``until`` appears, then kill its process group (nothing of it may stay)."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [*DEV, "--grpc-port", str(free_port()), "--http-port", "0", "--data-dir", str(data_dir)],
        env=service_env(HEATMAP_METRICS_PORT="0", **env),
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
        start_new_session=True,
    )
    os.close(child)
    out = b""
    try:
        deadline = time.monotonic() + timeout_s
        while until not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    out += os.read(main, 65536)
                except OSError:  # the child side closed: it exited
                    break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        os.close(main)
        leftover = DevProcess(data_dir)
        deadline = time.monotonic() + 30
        while leftover.broker_jvms() and time.monotonic() < deadline:
            time.sleep(0.5)
        leftover.kill_leftovers()
    return out


def test_dev_on_a_terminal_logs_readable_coloured_lines_and_json_when_told(
    tmp_path: Path,
) -> None:
    first = b"starting a local Kafka broker"
    readable = _first_output_on_a_terminal(tmp_path / "tty", {}, first)
    assert first in readable, readable
    assert b"\x1b[" in readable  # coloured
    line = next(raw for raw in readable.splitlines() if first in raw)
    plain = re.sub(rb"\x1b\[[0-9;]*m", b"", line).decode()
    assert "INFO" in plain
    assert "heatmap_cli.dev: starting a local Kafka broker" in plain
    assert not plain.lstrip().startswith("{")

    told = _first_output_on_a_terminal(tmp_path / "json", {"HEATMAP_LOG_FORMAT": "json"}, first)
    entry = json.loads(next(raw for raw in told.splitlines() if first in raw))
    assert entry["msg"] == "starting a local Kafka broker"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "heatmap_cli.dev"
