"""The query service's RPCs for browsers: Connect RPC (connect-python) over HTTP/1.1.

One implementation answers both transports: every endpoint here calls the
SAME ``QueryService`` handler the gRPC server calls, built from the
service's own gRPC method table (``QueryService.handlers()``), so a new RPC
reaches browsers when it reaches gRPC. Around each call the same checks as
``heatmap.grpc_server.ServiceInterceptor``, in the same order: the bearer
token from the ``Authorization`` header (``heatmap.auth.Authenticator``),
the method's permission (``heatmap.auth.authorize``, deny by default), the
caller made visible through ``current_principal()``, and domain errors
mapped once (``heatmap.errors.to_rpc_status``) to a Connect error whose code
is the gRPC code's name (``unauthenticated``, ``permission_denied``, ...)
and whose details carry the same ``google.rpc.BadRequest``. Anything else
is ``internal`` with a fixed message (logged here, never sent).

connect-python speaks Connect's unary protocol (POST ``/<service>/<method>``
with ``application/json`` or ``application/proto``), and also gRPC-Web; the
page uses the JSON form with ``fetch``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Histogram

from heatmap.auth import Authenticator, authorize, reset_principal, set_principal
from heatmap.errors import HeatmapError, to_rpc_status
from query_api.app import QueryService
from query_api.point_encoding import EncodedReply
from schemas.api import SERVICE, method_path
from schemas.heatmap.v1 import heatmap_pb2

logger = logging.getLogger(__name__)

_UNPARSABLE = "the request is not a valid message of this method (proto3 JSON or binary)"

_SERVICE = heatmap_pb2.DESCRIPTOR.services_by_name["HeatmapService"]
# Read-only RPCs may also be called with GET (Connect's cacheable form).
_NO_SIDE_EFFECTS = frozenset(
    {"QueryHeatmapData", "ListScreenshots", "GetScreenshot", "RenderHeatmap", "ListScreens"}
)


class HttpRpcMetrics:
    """Per-method latency of the HTTP transport (the gRPC one has its own series)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "heatmap_http_rpc_duration_seconds",
            "Server-side latency of RPCs over the HTTP (Connect) transport",
            ["method", "code"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class _Deadline:
    """The part of a gRPC ServicerContext the handlers use, from Connect's timeout."""

    def __init__(self, ctx: RequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def time_remaining(self) -> float | None:
        remaining_ms = self._ctx.timeout_ms()
        return None if remaining_ms is None else max(0.0, remaining_ms / 1000.0)


def connect_error(error: HeatmapError) -> ConnectError:
    """The Connect form of a domain error: same code name, message and details as gRPC."""
    status = to_rpc_status(error)
    return ConnectError(_code(error.code), status.message, status.details)


def _code(code: grpc.StatusCode) -> Code:
    name = code.name.lower()
    return Code.CANCELED if name == "cancelled" else Code(name)


class ConnectEndpoints(ConnectASGIApplication[QueryService]):
    """ASGI app serving ``/heatmap.v1.HeatmapService/<Method>`` for the query RPCs."""

    def __init__(
        self,
        service: QueryService,
        authenticator: Authenticator,
        metrics: HttpRpcMetrics | None,
        read_max_bytes: int,
    ) -> None:
        self._auth = authenticator
        self._metrics = metrics
        super().__init__(
            service=service,
            endpoints=self._endpoints_of,
            read_max_bytes=read_max_bytes,
            # No request or response compression: a small gzip body would be
            # inflated whole before the size limit is checked.
            compressions=(),
        )

    @property
    def path(self) -> str:
        return f"/{SERVICE}"

    # connect-python 0.9 answers a body its codec cannot parse as "unknown"
    # (HTTP 500) with the parser's text; it is the caller's error.
    async def _read_post_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._read_post_request(*args, **kwargs)
        except ConnectError:
            raise
        except Exception:
            raise ConnectError(Code.INVALID_ARGUMENT, _UNPARSABLE) from None

    async def _read_get_request(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super()._read_get_request(*args, **kwargs)
        except ConnectError:
            raise
        except Exception:
            raise ConnectError(Code.INVALID_ARGUMENT, _UNPARSABLE) from None

    def _endpoints_of(self, service: QueryService) -> Mapping[str, Any]:
        endpoints: dict[str, Any] = {}
        for generic in service.handlers():
            for name, handler in _method_handlers(generic).items():
                method = _SERVICE.methods_by_name[name]
                info: MethodInfo[Any, Any] = MethodInfo(
                    name=name,
                    service_name=SERVICE,
                    input=_message_class(method.input_type.name),
                    output=_message_class(method.output_type.name),
                    idempotency_level=(
                        IdempotencyLevel.NO_SIDE_EFFECTS
                        if name in _NO_SIDE_EFFECTS
                        else IdempotencyLevel.UNKNOWN
                    ),
                )
                endpoints[method_path(name)] = Endpoint.unary(
                    method=info, function=self._guarded(name, handler.unary_unary)
                )
        return endpoints

    def _guarded(
        self, name: str, inner: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]:
        path = method_path(name)
        metrics = self._metrics

        async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
            started = time.perf_counter()
            code = "OK"
            try:
                metadata = [
                    (k, v) for k, v in ctx.request_headers().allitems() if k == "authorization"
                ]
                principal = await self._auth.authenticate_async(metadata)
                authorize(principal, path)
                token = set_principal(principal)
                try:
                    reply = await inner(request, _Deadline(ctx))
                finally:
                    reset_principal(token)
                # Written as bytes already: the binary codec sends them as they are
                # (SerializeToString); proto3 JSON needs the message.
                if isinstance(reply, EncodedReply) and not _binary(ctx):
                    return reply.message()
                return reply
            except HeatmapError as e:
                code = e.code.name
                if e.code not in (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.UNAUTHENTICATED,
                ):
                    logger.warning("%s (http) failed: %s %s", name, code, e)
                raise connect_error(e) from None
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                logger.exception("%s (http) crashed", name)
                raise ConnectError(Code.INTERNAL, "internal error") from None
            finally:
                if metrics:
                    metrics.latency.labels(name, code).observe(time.perf_counter() - started)

        return call


class _CallDetails(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def _method_handlers(generic: grpc.GenericRpcHandler) -> dict[str, grpc.RpcMethodHandler]:
    """The unary handlers a generic handler serves, by method name (asked the way
    the gRPC server asks it, for each method of the contract)."""
    found = {}
    for method in _SERVICE.methods:
        handler = generic.service(_CallDetails(method_path(method.name)))
        if handler is not None and handler.unary_unary is not None:
            found[method.name] = handler
    return found


def _binary(ctx: RequestContext[Any, Any]) -> bool:
    """Whether the call's codec is Connect's binary one (a unary POST of application/proto;
    a GET names its codec in the query string, and falls back to the message here)."""
    content_type = ctx.request_headers().get("content-type", "").lower()
    return ctx.http_method() == "POST" and content_type == "application/proto"


def _message_class(name: str) -> type[Message]:
    cls: type[Message] = getattr(heatmap_pb2, name)
    return cls
