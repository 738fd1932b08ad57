"""gRPC server scaffolding shared by the gateway and the query service.

``ServiceInterceptor`` runs around every handler: it serves health and
reflection as they are, and every other method only if ``heatmap.auth``
lists it (deny by default; see there for the codes). For those it
authenticates the bearer token, checks the method's permission, exposes the
caller through ``heatmap.auth.current_principal()``, maps domain errors to
gRPC status (one place), and records latency metrics. ``new_server`` builds a
``grpc.aio`` server with health and reflection (v1 and v1alpha) registered
and a cap on concurrent calls; ``serve_forever`` runs it until
SIGTERM/SIGINT and drains in-flight calls.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from heatmap.auth import (
    METHOD_PERMISSIONS,
    Authenticator,
    authorize,
    needs_no_token,
    reset_principal,
    set_principal,
)
from heatmap.errors import HeatmapError, PermissionDenied, Unimplemented, to_rpc_status
from heatmap.ports import ensure_free
from heatmap.reflection import enable_reflection
from schemas.heatmap.v1 import heatmap_pb2

logger = logging.getLogger(__name__)

SERVICE_NAME = heatmap_pb2.DESCRIPTOR.services_by_name["HeatmapService"].full_name
# Health service name for liveness probes: SERVING whenever the process can
# answer at all. Readiness ("" and SERVICE_NAME) also drops while a backing
# system is down, and restarting a pod does not bring Kafka back.
LIVENESS = "liveness"
# Metric label for every method outside the permission table: the method
# name comes from the client, and each label value is a new time series.
UNLISTED = "unlisted"


class RpcMetrics:
    """Per-method RPC metrics, registered in the registry given."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "heatmap_rpc_duration_seconds",
            "Server-side RPC latency",
            ["method", "code"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.in_flight = Gauge(
            "heatmap_rpc_in_flight", "RPCs being handled", ["method"], registry=registry
        )
        self.errors = Counter(
            "heatmap_rpc_errors_total",
            "RPCs that ended with a non-OK code",
            ["method", "code"],
            registry=registry,
        )


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, metrics: RpcMetrics | None = None) -> None:
        self._auth = authenticator
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if needs_no_token(method):
            return handler
        if handler is not None and handler.unary_unary is not None and method in METHOD_PERMISSIONS:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return self._refuse(exists=handler is not None)

    def _refuse(self, exists: bool) -> grpc.RpcMethodHandler:
        """A handler that only says why not, for any call shape (it reads no message)."""
        metrics = self._metrics

        async def behavior(requests: Any, context: grpc.aio.ServicerContext) -> None:
            try:
                await self._auth.authenticate_async(context.invocation_metadata())
                if not exists:
                    raise Unimplemented("no such method")
                raise PermissionDenied("this method is not served to callers")
            except HeatmapError as e:
                if metrics:
                    metrics.errors.labels(UNLISTED, e.code.name).inc()
                await context.abort_with_status(rpc_status.to_status(to_rpc_status(e)))

        return grpc.stream_stream_rpc_method_handler(behavior)

    def _wrap(
        self, method: str, inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        short = method.rsplit("/", 1)[-1]
        metrics = self._metrics

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            if metrics:
                metrics.in_flight.labels(short).inc()
            try:
                principal = await self._auth.authenticate_async(context.invocation_metadata())
                authorize(principal, method)
                token = set_principal(principal)
                try:
                    return await inner(request, context)
                finally:
                    reset_principal(token)
            except HeatmapError as e:
                code = e.code
                if code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED):
                    logger.warning("%s failed: %s %s", short, code.name, e)
                await context.abort_with_status(rpc_status.to_status(to_rpc_status(e)))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as e:
                if isinstance(e, grpc.aio.AbortError):
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                code = grpc.StatusCode.INTERNAL
                logger.exception("%s crashed", short)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                if metrics:
                    metrics.in_flight.labels(short).dec()
                    metrics.latency.labels(short, code.name).observe(time.perf_counter() - started)
                    if code != grpc.StatusCode.OK:
                        metrics.errors.labels(short, code.name).inc()

        return behavior


def new_server(
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor],
    max_message_bytes: int,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    max_concurrent_rpcs: int | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with health and reflection; call ``init_health`` before starting it.

    Beyond ``max_concurrent_rpcs`` calls in progress, gRPC itself answers
    RESOURCE_EXHAUSTED before any handler (or the interceptor) runs.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
    return server, health_servicer


async def init_health(health_servicer: health.aio.HealthServicer) -> None:
    """Alive, not ready: readiness turns SERVING only through ``set_serving``."""
    await set_serving(health_servicer, False)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


def bind(server: grpc.aio.Server, host: str, port: int, setting: str = "HEATMAP_GRPC_PORT") -> int:
    """Bind an insecure port (TLS terminates at the router); returns the bound port.

    A port someone else holds raises ``heatmap.ports.PortInUse`` naming
    ``setting``; grpc itself only says "Failed to bind" for every cause.
    """
    try:
        bound: int = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        ensure_free(setting, host, port)
        raise OSError(f"{setting}={port}: cannot bind gRPC on {host}")
    return bound


async def wait_for_stop_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def drain(
    server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, grace_s: float
) -> None:
    """Stop accepting calls, let in-flight ones finish within ``grace_s``."""
    await set_serving(health_servicer, False)
    await server.stop(grace_s)
