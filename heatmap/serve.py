"""Run components behind one gRPC endpoint until SIGTERM: shared by every entry point.

A component is one stage's runtime (gateway, query service, stream worker).
``serve`` starts them, puts their RPC handlers on one ``grpc.aio`` server
(behind the shared auth/error/metrics interceptor, with health and
reflection), reports SERVING only while every component is healthy, and on
SIGTERM/SIGINT drains: NOT_SERVING, stop accepting, let in-flight calls
finish within the grace period, then stop components in reverse order (the
gateway flushes its producer, the worker flushes and commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from heatmap.auth import Authenticator
from heatmap.grpc_server import (
    RpcMetrics,
    ServiceInterceptor,
    bind,
    drain,
    init_health,
    new_server,
    set_serving,
    wait_for_stop_signal,
)
from heatmap.ports import PortInUse, ensure_free
from heatmap.settings import Settings

logger = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    def handlers(self) -> Sequence[grpc.GenericRpcHandler]: ...

    def healthy(self) -> bool: ...

    async def stop(self) -> None: ...


async def serve(
    settings: Settings,
    components: Sequence[Component],
    registry: CollectorRegistry,
    *,
    host: str | None = None,
    port: int | None = None,
    port_setting: str = "HEATMAP_GRPC_PORT",
    on_ready: Callable[[int], None] | None = None,
    stop_signal: Callable[[], Awaitable[None]] = wait_for_stop_signal,
) -> None:
    host = host if host is not None else settings.server.grpc_host
    port = port if port is not None else settings.server.grpc_port
    # Before any component starts (connects to Kafka, loads state): a taken
    # port is a one-line configuration error, not a failure after start-up.
    ensure_free(port_setting, host, port)
    if settings.server.metrics_port:
        start_metrics(registry, settings.server.metrics_port)
    started: list[Component] = []
    try:
        for component in components:
            await component.start()
            started.append(component)
        handlers = [h for c in components for h in c.handlers()]
        server, health = new_server(
            interceptors=[ServiceInterceptor(Authenticator(settings.auth), RpcMetrics(registry))],
            max_message_bytes=settings.server.max_message_bytes,
            max_concurrent_rpcs=settings.server.max_concurrent_rpcs,
            register=[lambda s: s.add_generic_rpc_handlers(handlers)] if handlers else [],
        )
        bound = bind(server, host, port, port_setting)
        await init_health(health)
        await server.start()
        watcher = asyncio.create_task(_watch_health(health, components))
        logger.info("serving on port %d: %s", bound, ", ".join(c.name for c in components))
        if on_ready:
            on_ready(bound)
        try:
            await stop_signal()
            logger.info(
                "stopping: draining in-flight calls (grace %.0fs)", settings.server.shutdown_grace_s
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await drain(server, health, settings.server.shutdown_grace_s)
    finally:
        for component in reversed(started):
            try:
                await component.stop()
            except Exception:
                logger.exception("stopping %s failed", component.name)
    logger.info("stopped")


def start_metrics(
    registry: CollectorRegistry,
    port: int,
    host: str = "0.0.0.0",
    setting: str = "HEATMAP_METRICS_PORT",
) -> int:
    """Serve ``/metrics`` on ``port`` (0: any free port) in a daemon thread; the bound port."""
    try:
        server, _ = start_http_server(port, host, registry=registry)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(setting, host, port) from None
        raise
    bound: int = server.server_port
    logger.info("metrics on :%d/metrics", bound)
    return bound


async def _watch_health(health: Any, components: Sequence[Component]) -> None:
    """SERVING exactly while every component reports healthy."""
    last: bool | None = None
    while True:
        now = all(c.healthy() for c in components)
        if now != last:
            await set_serving(health, now)
            logger.info("health: %s", "SERVING" if now else "NOT_SERVING")
            last = now
        await asyncio.sleep(0.5)
