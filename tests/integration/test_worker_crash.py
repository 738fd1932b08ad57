"""Exactly once under SIGKILL: ``heatmap worker`` killed repeatedly, restarted, counts exact.

The worker runs as a subprocess with its own chDB path (one process per
store); the results are read by another subprocess once the worker exited.
The input has 210,000+ events in 420+ batches, plus client retries of earlier
batches (counted once, across restarts), batches with generated ids sent
twice (counted twice), late events 40 days old (another month partition) and
poison messages (dead-lettered, never counted). It is produced in waves, one
before each run, and every run but the last is SIGKILLed at a random moment
while it works: mid-batch, mid-insert, between insert and offset commit.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from schemas.touch_batch import TouchBatch, encode_batch
from tests.worker_support import (
    WorkerProcess,
    expected_counts,
    fleet_batches,
    produce,
    read_messages,
    shifted,
    stored_counts,
    wait_committed,
    worker_env,
)

KILLS = 6


@pytest.mark.slow
def test_sigkill_loop_counts_every_event_exactly_once(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    rng = random.Random(20261127)
    batches = fleet_batches(420, 500)
    counted: list[TouchBatch] = list(batches)
    messages: list[tuple[str, bytes]] = [(b.user_id, encode_batch(b)) for b in batches]
    retries = [batches[i] for i in rng.sample(range(200), 25)]
    generated = [replace(b, client_batch_id=False) for b in fleet_batches(5, 200, client_ids=False)]
    late = [shifted(batches[i], 40 * 24, f"late-{i}") for i in range(6)]
    counted += generated + generated + late
    extra: list[tuple[str, bytes]] = [(b.user_id, encode_batch(b)) for b in retries]
    extra += [(b.user_id, encode_batch(b)) for b in generated + generated + late]
    bad = replace(batches[0], batch_id="bad", y=np.full(500, np.nan, np.float32))
    extra += [("p", b"\x08\x07garbage"), ("p", b""), ("p", encode_batch(bad))]
    # Retries go after their originals: spread the extras over the later waves.
    waves = [list(w) for w in np.array_split(np.arange(len(messages)), KILLS + 1)]
    plan: list[list[tuple[str, bytes]]] = [[messages[i] for i in w] for w in waves]
    for j, message in enumerate(extra):
        plan[1 + j % KILLS].append(message)

    path = tmp_path / "chdb"
    group = "crash-" + topic
    env = worker_env(
        kafka_bootstrap,
        topic,
        group,
        path,
        HEATMAP_FLUSH_INTERVAL_S="0.2",
        HEATMAP_FLUSH_MAX_CELLS="2000",
        HEATMAP_CLICKHOUSE_RETRY_MAX_S="1",
    )
    log = tmp_path / "worker.log"
    kills = 0
    for wave in plan[:-1]:
        produce(kafka_bootstrap, topic, wave)
        start = len(log.read_text()) if log.exists() else 0
        worker = WorkerProcess(env, log)
        try:
            worker.wait_for(r"partitions assigned: \[\d", timeout_s=90, after=start)
            worker.wait_for(r"loaded state of", timeout_s=30, after=start)
            time.sleep(rng.uniform(0.05, 1.2))  # mid-flush, mid-insert or before a commit
        finally:
            worker.kill()
        kills += 1
    produce(kafka_bootstrap, topic, plan[-1])
    start = len(log.read_text())
    worker = WorkerProcess(env, log)
    try:
        assert wait_committed(kafka_bootstrap, group, topic, 3, timeout_s=180), log.read_text()[
            -3000:
        ]
        assert worker.terminate() == 0
    finally:
        worker.kill()

    text = log.read_text()
    assert kills == KILLS
    assert len(re.findall(r"partitions assigned: \[\d", text)) >= KILLS + 1
    stored = stored_counts(path)
    expected = expected_counts(counted)
    total = sum(len(b) for b in counted)
    assert total >= 200_000
    for table, cells in expected.items():
        got = stored[table]
        missing = sum((cells - got).values())
        extra_count = sum((got - cells).values())
        assert (missing, extra_count) == (0, 0), f"{table}: {missing} missing, {extra_count} extra"
        assert got == cells
        assert sum(got.values()) == total
    dead = read_messages(kafka_bootstrap, topic + "-dlq")
    assert len({dict(m.headers())["heatmap-source"] for m in dead}) == 3
    replays = re.findall(r"replay: (\d+) of", text)
    assert replays, "no restart replayed stored records: the kills missed every window"
    print(f"{kills} kills; {len(replays)} flushes dropped already-stored events after restarts")
