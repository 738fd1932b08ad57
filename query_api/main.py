"""``heatmap query-api``: the query service as its own deployable, configured by env.

gRPC on HEATMAP_GRPC_PORT; the explorer (page and Connect RPC for browsers,
the same handlers) on HEATMAP_HTTP_PORT in the same process, unless that is 0.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from heatmap.serve import Component, serve
from heatmap.settings import Settings
from query_api.app import QueryService
from query_api.explorer.server import explorer_for


def run(settings: Settings) -> int:
    settings.require_clickhouse()
    settings.require_auth()
    settings.require_screenshot_store()
    registry = CollectorRegistry()
    service = QueryService(settings, registry)
    components: list[Component] = [service]
    if settings.query.http_port:
        explorer = explorer_for(service, settings, registry)
        explorer.check_port()  # before connecting to anything, like the gRPC port
        components.append(explorer)
    asyncio.run(serve(settings, components, registry))
    return 0
