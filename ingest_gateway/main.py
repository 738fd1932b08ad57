"""``heatmap gateway``: the ingest gateway as its own deployable, configured by ``HEATMAP_*``.

The gateway does not create topics: ``heatmap dev`` creates them for the
embedded stack, and in production the topic (partition count, replication,
retention) is an operator's decision (``heatmap.kafka_admin.ensure_topics``
is there for set-up scripts). A missing topic keeps health NOT_SERVING and
is logged, rather than silently auto-created with broker defaults.
"""

from __future__ import annotations

import asyncio
import gc
from dataclasses import replace

from prometheus_client import CollectorRegistry

from heatmap.serve import serve
from heatmap.settings import Settings
from ingest_gateway.app import MAX_REQUEST_BYTES, Gateway


def run(settings: Settings) -> int:
    settings.require_kafka()
    settings.require_auth()
    # Only IngestTouchEvents is served here, and no valid request reaches
    # 1 MiB: grpc refuses anything larger before buffering it.
    settings = replace(
        settings,
        server=replace(
            settings.server,
            max_message_bytes=min(settings.server.max_message_bytes, MAX_REQUEST_BYTES),
        ),
    )
    registry = CollectorRegistry()
    # Everything imported so far lives as long as the process: keep it out of
    # the cyclic GC's full collections, which otherwise walk it all (a
    # latency spike) every few thousand requests.
    gc.freeze()
    asyncio.run(serve(settings, [Gateway(settings, registry)], registry))
    return 0
