"""A client of the seed contract (no ``batch_id``) retrying on UNAVAILABLE while the broker
stalls under load: every acknowledged event is counted exactly once, through the worker.

The broker is frozen with SIGSTOP (a GC pause, a hung disk) while requests
are in flight. Their delivery reports time out, the callers are told
UNAVAILABLE and resend the same request; when the broker resumes, it appends
what was already on its socket too. Before the implicit idempotency key
those first copies were counted beside their retries (330,600 acknowledged,
331,200 counted in a 15 s stall against ``heatmap dev``); now the worker
drops them by the key derived from the user id and the request's bytes.
The test also checks the stall really produced such copies, so it cannot
pass by not exercising the case.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
from clickhouse_connect.driver.client import Client

from heatmap.settings import ClickHouseSettings, KafkaSettings, Settings
from heatmap_devtools.localinfra.kafka import KafkaBroker
from ingest_gateway.validation import to_batch
from schemas.heatmap.v1 import heatmap_pb2
from schemas.touch_batch import TouchBatch, decode_batch
from stream_workers.app import Worker
from tests.conftest import create_topic, unique
from tests.integration.test_gateway_support import (
    auth,
    gateway_settings,
    read_topic,
    running_gateway,
    touch,
)
from tests.worker_support import (
    assert_exact,
    inprocess_settings,
    metric,
    start_worker,
    wait_all_committed,
)

PUBLISH_TIMEOUT_S = 1.5
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def request(device: int, seq: int, base_ms: int) -> heatmap_pb2.IngestTouchEventsRequest:
    """50 events, every one with its client time: what a mobile SDK buffers and sends."""
    return heatmap_pb2.IngestTouchEventsRequest(
        events=[
            touch(
                screen=f"S{device % 3}",
                x=((seq * 7 + i) % 97) / 97,
                y=((device * 13 + i) % 89) / 89,
                kind=1 + i % 3,
                ts_ms=base_ms + seq * 50 + i,
            )
            for i in range(50)
        ]
    )


async def test_retries_without_batch_id_are_counted_once_through_a_broker_stall(
    base_settings: Settings,
    broker: KafkaBroker,
    clickhouse: ClickHouseSettings,
    client: Client,
    started: list[Worker],
) -> None:
    topic = unique("stall")
    create_topic(broker.bootstrap, topic)
    kafka = KafkaSettings(
        bootstrap=broker.bootstrap, topic=topic, publish_timeout_s=PUBLISH_TIMEOUT_S
    )
    settings = inprocess_settings(kafka, clickhouse)
    _, registry = await start_worker(settings, client, started)
    base_ms = time.time_ns() // 1_000_000 - 3_600_000
    acknowledged: list[tuple[str, bytes]] = []  # (user, request bytes), once each
    retries = 0
    stop_sending = asyncio.Event()

    async with running_gateway(gateway_settings(base_settings, kafka)) as gw:

        async def device(n: int) -> None:
            nonlocal retries
            user = f"device-{n}"
            seq = 0
            while not stop_sending.is_set():
                req = request(n, seq, base_ms)
                while True:  # the seed client: resend the same request until OK
                    code = grpc.StatusCode.OK
                    try:
                        reply = await gw.stub.IngestTouchEvents(req, metadata=auth(user))
                    except grpc.aio.AioRpcError as e:
                        code = e.code()
                    if code != grpc.StatusCode.OK:
                        assert code in RETRYABLE, code
                        retries += 1
                        await asyncio.sleep(0.05)
                        continue
                    assert reply.ingested_count == 50
                    acknowledged.append((user, req.SerializeToString()))
                    break
                seq += 1

        devices = [asyncio.create_task(device(n)) for n in range(8)]
        await asyncio.sleep(2.0)
        pid = broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(PUBLISH_TIMEOUT_S * 3)
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(3.0)
        stop_sending.set()
        await asyncio.wait_for(asyncio.gather(*devices), 120)

    assert retries > 0, "the stall produced no UNAVAILABLE: nothing was tested"
    # What the topic holds: some requests twice (their first copy was stored
    # although the caller was told UNAVAILABLE), each with the same key.
    records = read_topic(broker.bootstrap, topic, len(acknowledged), settle_s=2.0)
    published = [decode_batch(r.value) for r in records]
    contents = [(b.user_id, b.timestamp_ms.tobytes(), b.x.tobytes()) for b in published]
    copies = len(contents) - len(set(contents))
    assert copies > 0, "no request reached Kafka twice: the stall did not exercise the case"

    await wait_all_committed(settings, timeout_s=90)
    expected: list[TouchBatch] = [to_batch(data, user, base_ms) for user, data in acknowledged]
    assert_exact(client, expected)
    total = client.query(
        "SELECT sum(events) FROM touch_cells_by_user WHERE screen_name != ''"
    ).result_rows[0][0]
    assert total == 50 * len(acknowledged)
    # Each copy carried the same derived key as its retry, which is how it was dropped.
    assert len({(b.user_id, b.batch_id) for b in published}) == len(set(contents))
    assert all(b.client_batch_id for b in published)
    assert metric(registry, "heatmap_worker_duplicate_batches_total") >= copies
    print(
        f"acknowledged {len(acknowledged)} requests ({50 * len(acknowledged)} events), "
        f"{retries} retries, {copies} stored twice and dropped by the worker"
    )
