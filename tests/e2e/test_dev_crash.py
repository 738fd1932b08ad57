"""``heatmap dev`` killed with SIGKILL, mid-load, then restarted on the same data dir.

The broker must not outlive the dev process (it would keep the data dir's
lock and the restart would fail), a broker an older runner left behind must
be cleared on start, and every event acknowledged before the kill must be
counted exactly once after the restart.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.kafka import KafkaBroker
from heatmap_devtools.localinfra.process import terminate
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

pytestmark = pytest.mark.slow


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(tmp_path / "data")
    try:
        yield process
    finally:
        process.kill_leftovers()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(0.2)


class Sender:
    """Sends batches until stopped, each from its own user with its own size, so
    that one PER_USER query tells exactly which batches were counted how often."""

    def __init__(self, dev: DevProcess, screen: str) -> None:
        self.dev = dev
        self.screen = screen
        self.acked: dict[str, int] = {}  # user -> events acknowledged
        self.unanswered: dict[str, int] = {}  # sent, then failed: stored or not, unknown
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sender:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @staticmethod
    def size(i: int) -> int:
        return 3 + i % 7

    def _run(self) -> None:
        at = Timestamp()
        at.FromSeconds(int(time.time()) - 60)
        with grpc.insecure_channel(self.dev.target) as channel:
            stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
            i = 0
            while not self._stop.is_set():
                user = f"u{i:05d}"
                n = self.size(i)
                event = heatmap_pb2.TouchEvent(
                    screen_name=self.screen, x=0.5, y=0.5, event_type=heatmap_pb2.TAP, timestamp=at
                )
                request = heatmap_pb2.IngestTouchEventsRequest(
                    events=[event] * n, batch_id=f"batch-{i}"
                )
                token = mint_token(self.dev.secret, user, [])
                try:
                    reply = stub.IngestTouchEvents(
                        request, metadata=(("authorization", f"Bearer {token}"),), timeout=5
                    )
                except grpc.RpcError:
                    self.unanswered[user] = n
                    return  # the server is gone: no retry, so nothing is sent twice
                assert reply.ingested_count == n
                self.acked[user] = n
                i += 1


def per_user_counts(dev: DevProcess, screen: str) -> tuple[dict[str, int], int]:
    token = mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])
    with grpc.insecure_channel(dev.target) as channel:
        reply = heatmap_pb2_grpc.HeatmapServiceStub(channel).QueryHeatmapData(
            heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, mode=heatmap_pb2.PER_USER),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
    return {u.user_id: u.touch_count for u in reply.user_touch_counts}, reply.total_count


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "dev-process-alone"])
def test_sigkill_mid_load_then_restart_counts_every_acknowledged_event_once(
    dev: DevProcess, group: bool
) -> None:
    dev.start()
    screen = f"Crash-{uuid.uuid4().hex[:6]}"
    assert dev.broker_jvms(), "the dev broker is running"
    with Sender(dev, screen) as sender:
        wait_until(lambda: len(sender.acked) >= 40, 60, "40 batches acknowledged")
        dev.kill(group=group)
    assert sender.acked

    # The broker goes with its dev process: nothing holds the data dir's lock.
    wait_until(lambda: not dev.broker_jvms(), 30, "no Kafka JVM left on the data dir")

    dev.start()
    expected = sender.acked

    def all_acknowledged_counted() -> bool:
        counts, _ = per_user_counts(dev, screen)
        return all(counts.get(user) == n for user, n in expected.items())

    wait_until(all_acknowledged_counted, 90, f"{sum(expected.values())} acknowledged events")
    time.sleep(2.0)  # several flush intervals: a replay counted twice would show up now
    counts, total = per_user_counts(dev, screen)
    for user, n in expected.items():
        assert counts[user] == n, user
    # A batch unanswered at the kill was stored whole or not at all.
    for user, n in sender.unanswered.items():
        assert counts.get(user, 0) in (0, n), user
    assert set(counts) <= set(expected) | set(sender.unanswered)
    assert total == sum(counts.values())
    assert dev.stop() == 0
    assert not dev.broker_jvms()


def test_broker_left_by_an_older_runner_is_stopped_on_start(dev: DevProcess) -> None:
    # An orphan as the runner before the watchdog left it: a broker with no
    # pid file whose starter (this test's helper) has let go of it.
    orphan = KafkaBroker(dev.data_dir / "kafka", die_with_parent=False)
    orphan.start()
    orphan_pid = orphan.pid
    assert orphan_pid is not None
    assert orphan._process is not None
    orphan_proc = orphan._process.proc
    (dev.data_dir / "kafka" / "broker.pid").unlink()
    orphan._process = None
    try:
        dev.start()
        assert orphan_pid not in dev.broker_jvms()
        assert len(dev.broker_jvms()) == 1
        notices = [line for line in dev.run_log().splitlines() if "left running" in line]
        assert len(notices) == 1, notices
        assert f"pid {orphan_pid}" in notices[0]
        assert dev.stop() == 0
    finally:
        terminate(orphan_pid, timeout_s=5)
        orphan_proc.wait(10)  # our child: reap it


def test_stale_pid_file_of_a_dead_broker_is_cleared_on_start(dev: DevProcess) -> None:
    dev.start()
    pid_file = dev.data_dir / "kafka" / "broker.pid"
    assert pid_file.exists()
    stale = pid_file.read_text()
    jvms = dev.broker_jvms()
    dev.kill(group=True)
    # The watchdog removes its pid file once the JVM has exited...
    wait_until(lambda: not pid_file.exists(), 30, "the watchdog cleaned up")
    assert not dev.broker_jvms()
    # ...unless it was killed too: then the pid file of a dead JVM stays behind.
    pid_file.write_text(stale)
    dev.start()
    notices = [line for line in dev.run_log().splitlines() if "crashed, gone" in line]
    assert len(notices) == 1, notices
    assert f"pid {jvms[0]}" in notices[0]
    assert dev.stop() == 0
