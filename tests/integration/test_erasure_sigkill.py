"""An erasure SIGKILLed half-way, twice, then run again: the same exact result.

chDB lets one process own a store, so the erasure runs where the worker runs:
``heatmap dev`` (worker + query service, one process) on the session's Kafka
broker, erased through its EraseUserData RPC. The process is SIGKILLed once
right after the suppression is recorded and once after the first negation
insert; each restart reruns the request, which resumes. Afterwards every cell
of every table equals the counts of the other users' batches alone (read from
the store once dev has stopped), later events of the erased user are not
counted, and the audit table holds one line.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import grpc
import pytest

from heatmap.auth import ERASE_USER_DATA, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc
from schemas.touch_batch import TouchBatch
from tests.integration.test_erasure import dataset, victim_of
from tests.worker_support import (
    expected_counts,
    normalised,
    produce_batches,
    query_path,
    shifted,
    stored_counts,
    wait_committed,
)

pytestmark = pytest.mark.slow


def erase(dev: DevProcess, user: str, results: list[object]) -> None:
    token = mint_token(dev.secret, "test-admin", [ERASE_USER_DATA], 600)
    with grpc.insecure_channel(dev.target) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        try:
            results.append(
                stub.EraseUserData(
                    heatmap_pb2.EraseUserDataRequest(user_id=user),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=180,
                )
            )
        except grpc.RpcError as e:
            results.append(e)


def erase_and_kill_at(dev: DevProcess, user: str, pattern: str) -> None:
    results: list[object] = []
    call = threading.Thread(target=erase, args=(dev, user, results))
    call.start()
    deadline = time.monotonic() + 120
    while not re.search(pattern, dev.run_log()):
        assert time.monotonic() < deadline, dev.log()
        assert not results, f"erasure ended before the kill: {results}\n{dev.log()}"
        time.sleep(0.005)
    dev.kill(group=True)
    call.join(30)
    assert "per-user rows deleted" not in dev.run_log(), "killed too late to test a resume"


def test_erasure_sigkilled_halfway_twice_then_rerun_is_exact(
    tmp_path: Path, kafka_bootstrap: str, topic: str
) -> None:
    group = "g-" + topic
    dev = DevProcess(
        tmp_path / "data",
        {
            "HEATMAP_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "HEATMAP_KAFKA_TOPIC": topic,
            "HEATMAP_KAFKA_DLQ_TOPIC": topic + "-dlq",
            "HEATMAP_KAFKA_CONSUMER_GROUP": group,
            "HEATMAP_KAFKA_PARTITIONS": "3",
        },
    )
    # Three months or more of the victim's data: six negation inserts or more to
    # kill between (all of it well inside the default retention).
    batches: list[TouchBatch] = []
    for months in range(2):
        for b in dataset(40, 1000 * months):
            batches.append(shifted(b, 24 * 31 * months, b.batch_id) if months else b)
    victim = victim_of(batches)
    others = [b for b in batches if b.user_id != victim]
    try:
        dev.start()
        produce_batches(kafka_bootstrap, topic, batches)
        assert wait_committed(kafka_bootstrap, group, topic, 3, timeout_s=120)

        erase_and_kill_at(dev, victim, r"erasure \w+: suppression version \d+ recorded")
        dev.start()
        erase_and_kill_at(dev, victim, r"erasure \w+: negated touch_cells \d+ \(\d+ rows\)")
        assert "resuming" in dev.run_log()
        dev.start()
        results: list[object] = []
        erase(dev, victim, results)
        reply = results[0]
        assert isinstance(reply, heatmap_pb2.EraseUserDataResponse), reply
        assert reply.outcome == "done"
        assert reply.events == sum(len(b) for b in batches if b.user_id == victim)

        after = [b for b in dataset(40, 9000) if b.user_id == victim]
        produce_batches(kafka_bootstrap, topic, after)
        assert wait_committed(kafka_bootstrap, group, topic, 3, timeout_s=120)
        assert dev.stop() == 0
    finally:
        dev.kill_leftovers()

    store = tmp_path / "data" / "chdb"
    assert stored_counts(store) == normalised(expected_counts(others))
    audit = query_path(store, "heatmap", "SELECT user_id, action, events FROM erasure_audit")
    assert audit == [[victim, "erase", reply.events]]
    left = query_path(
        store, "heatmap", f"SELECT count() FROM touch_cells_by_user WHERE user_id = '{victim}'"
    )
    assert left == [[0]]
