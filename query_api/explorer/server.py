"""ExplorerHttp: the explorer's HTTP port as a ``heatmap.serve`` component.

uvicorn runs on the event loop that runs the grpc.aio server, in the same
process and under the same lifecycle: ``start`` binds the port (after the
query service is ready: it is listed after it), ``healthy`` joins the
readiness the gRPC health service reports, and ``stop`` (called by
``heatmap.serve`` after the gRPC drain, before the query service stops)
stops accepting, lets in-flight requests finish within the grace period and
closes the connections. uvicorn's own signal handling is not used (its
``serve()`` would replace the handlers ``heatmap.serve`` waits on): the
component drives ``startup``/``main_loop``/``shutdown`` itself.

It serves no gRPC handlers; the RPCs it answers are the query service's own
(``connect_app``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence

import grpc
import uvicorn
from prometheus_client import CollectorRegistry

from heatmap.auth import Authenticator
from heatmap.ports import ensure_free
from heatmap.settings import AuthSettings, Settings
from query_api.app import QueryService
from query_api.explorer.connect_app import ConnectEndpoints, HttpRpcMetrics
from query_api.explorer.http_app import explorer_app

logger = logging.getLogger(__name__)


class ExplorerHttp:
    name = "explorer-http"

    def __init__(
        self,
        service: QueryService,
        auth: AuthSettings,
        registry: CollectorRegistry | None,
        *,
        host: str,
        port: int,
        max_body_bytes: int,
        shutdown_grace_s: float,
        port_setting: str = "HEATMAP_HTTP_PORT",
    ) -> None:
        self._service = service
        self._host = host
        self._port = port
        self._setting = port_setting
        self._grace_s = shutdown_grace_s
        rpc = ConnectEndpoints(
            service,
            Authenticator(auth),
            HttpRpcMetrics(registry) if registry is not None else None,
            read_max_bytes=max_body_bytes,
        )
        self._app = explorer_app(rpc, service.healthy, max_body_bytes=max_body_bytes)
        self._server: uvicorn.Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.bound_port = 0

    def check_port(self) -> None:
        """Raise ``PortInUse`` naming the setting; call before anything starts."""
        ensure_free(self._setting, self._host, self._port)

    async def start(self) -> None:
        self.check_port()
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host.strip("[]"), self._port))
        except OSError:
            sock.close()
            self.check_port()
            raise
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self.bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=max(1, int(self._grace_s)),
            # A browser keeps one idle connection or two; drop them soon.
            timeout_keep_alive=15,
            limit_concurrency=512,
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)  # what serve() would set up
        await server.startup(sockets=[sock])
        self._server = server
        self._loop_task = asyncio.create_task(server.main_loop())
        logger.info("explorer on http://%s:%d/explorer/", self._host, self.bound_port)

    def handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        return []

    def healthy(self) -> bool:
        return self._server is not None and not self._server.should_exit

    async def stop(self) -> None:
        server, task = self._server, self._loop_task
        self._server = None
        if server is None:
            return
        server.should_exit = True
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.shutdown(sockets=[self._socket] if self._socket is not None else None)
        self._socket = None


def explorer_for(
    service: QueryService,
    settings: Settings,
    registry: CollectorRegistry | None,
    *,
    host: str | None = None,
    port: int | None = None,
    port_setting: str = "HEATMAP_HTTP_PORT",
) -> ExplorerHttp:
    """The explorer component for ``service`` as the settings configure it: the
    gRPC host, ``HEATMAP_HTTP_PORT``, request bodies bounded like gRPC messages."""
    return ExplorerHttp(
        service,
        settings.auth,
        registry,
        host=host if host is not None else settings.server.grpc_host,
        port=port if port is not None else settings.query.http_port,
        max_body_bytes=settings.server.max_message_bytes,
        shutdown_grace_s=settings.server.shutdown_grace_s,
        port_setting=port_setting,
    )
