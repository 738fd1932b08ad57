"""``heatmap worker``: one stream-worker process, configured by ``HEATMAP_*`` variables.

Runs the ``Worker`` component under ``heatmap.serve.serve`` (gRPC health on
``HEATMAP_GRPC_PORT``, Prometheus metrics on ``HEATMAP_METRICS_PORT``). On
SIGTERM/SIGINT the worker flushes what it holds, commits, leaves the group
and the process exits 0. If the Faust app crashes (an unexpected error in the
agent: ``CrashingSupervisor``) the process exits 1 so the orchestrator
restarts it; un-acked records are replayed and the offset watermarks keep
the counts exact.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import CollectorRegistry

from heatmap.clickhouse import is_chdb, migrate
from heatmap.grpc_server import wait_for_stop_signal
from heatmap.serve import serve
from heatmap.settings import Settings
from stream_workers.app import Worker

logger = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    settings.require_kafka()
    url = settings.require_clickhouse()
    if is_chdb(url):
        # An embedded store belongs to this process alone: nobody else can migrate it.
        migrate(settings.clickhouse)
    return asyncio.run(_run(settings))


async def _run(settings: Settings) -> int:
    registry = CollectorRegistry()
    worker = Worker(settings, registry)
    crashed = False

    async def stop_signal() -> None:
        nonlocal crashed
        signal_task = asyncio.create_task(wait_for_stop_signal())
        try:
            while not signal_task.done():
                if worker.crashed():
                    crashed = True
                    logger.error("worker crashed; exiting so that it is restarted")
                    return
                await asyncio.wait({signal_task}, timeout=0.5)
        finally:
            signal_task.cancel()

    await serve(settings, [worker], registry, stop_signal=stop_signal)
    return 1 if crashed else 0
