"""``heatmap query-api``: the query service as its own deployable, configured by env."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from heatmap.serve import serve
from heatmap.settings import Settings
from query_api.app import QueryService


def run(settings: Settings) -> int:
    settings.require_clickhouse()
    settings.require_auth()
    settings.require_screenshot_store()
    registry = CollectorRegistry()
    asyncio.run(serve(settings, [QueryService(settings, registry)], registry))
    return 0
