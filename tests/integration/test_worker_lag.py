"""``heatmap_worker_consumer_lag`` read from ``/metrics`` (HTTP) through a rebalance.

Each worker reports only the partitions assigned to it now, so a sum over
the fleet counts each partition once; a partition whose records were all
stored (by an earlier worker) reports 0 from the assignment on, not its
whole high watermark until this worker's first flush of it.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import pytest
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from heatmap.settings import Settings
from stream_workers.app import Worker
from tests.worker_support import (
    fleet_batches,
    produce_batches,
    start_worker,
    wait_all_committed,
)

Lag = dict[str, float]


class MetricsEndpoint:
    """A registry served on a loopback port, read back over HTTP like Prometheus does."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def lag(self) -> Lag:
        with urllib.request.urlopen(self.url, timeout=5) as reply:
            text = reply.read().decode()
        return {
            s.labels["partition"]: s.value
            for family in text_string_to_metric_families(text)
            if family.name == "heatmap_worker_consumer_lag"
            for s in family.samples
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def endpoints() -> Iterator[list[MetricsEndpoint]]:
    served: list[MetricsEndpoint] = []
    yield served
    for e in served:
        e.close()


def equals(endpoint: MetricsEndpoint, want: Lag) -> object:
    """True, or what was read instead (shown if the wait times out)."""
    got = endpoint.lag()
    return got == want or got


async def until(what: str, check: object, timeout_s: float = 30.0) -> None:
    """Until ``check()`` returns True; anything else it returns is shown on time-out."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last is True:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{what}: last seen {last}")


@pytest.mark.slow
async def test_lag_series_follow_the_assignment_and_idle_partitions_report_zero(
    settings: Settings, client: Client, started: list[Worker], endpoints: list[MetricsEndpoint]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    first = fleet_batches(30, 500)
    second = [replace(b, batch_id="w2-" + b.batch_id) for b in fleet_batches(30, 500)]

    # An earlier worker stores and commits everything, then leaves.
    earlier, _ = await start_worker(settings, client, started)
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, first)
    await wait_all_committed(settings)
    await earlier.stop()
    started.remove(earlier)

    # A takes over three idle partitions: nothing to store, so lag 0 everywhere.
    a, registry_a = await start_worker(settings, client, started)
    endpoints.append(MetricsEndpoint(registry_a))
    at_a = endpoints[-1]
    await until("A reports 0 on its idle partitions", lambda: equals(at_a, dict.fromkeys("012", 0)))

    # B joins: each partition is reported by exactly one worker, with lag 0.
    b, registry_b = await start_worker(settings, client, started)
    endpoints.append(MetricsEndpoint(registry_b))
    at_b = endpoints[-1]

    def split_once() -> object:
        lag_a, lag_b = at_a.lag(), at_b.lag()
        if (
            not lag_a
            or not lag_b
            or set(lag_a) & set(lag_b)
            or set(lag_a) | set(lag_b) != set("012")
        ):
            return (lag_a, lag_b)
        return all(v == 0 for v in [*lag_a.values(), *lag_b.values()]) or (lag_a, lag_b)

    await until("the partitions are split, each reported once, all at 0", split_once, 60)

    # New records: the lag rises only where they are, and falls back to 0 once stored.
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, second)
    await wait_all_committed(settings)
    await until("lag back to 0 after the second wave", split_once)
    assert a.processor.flushed_offsets or b.processor.flushed_offsets

    # A leaves: B reports all three, A's endpoint none.
    await a.stop()
    started.remove(a)
    await until("A reports nothing once it stopped", lambda: equals(at_a, {}))
    await until("B reports all three at 0", lambda: equals(at_b, dict.fromkeys("012", 0)), 60)
