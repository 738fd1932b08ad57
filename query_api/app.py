"""QueryService: the gRPC component behind every HeatmapService method but ingest.

It owns a ClickHouse client (cell aggregates) and a ScreenshotStore (PNG
backdrops), both given or built in ``start()``. Authentication, permissions
(VIEW_HEATMAPS for reads, MANAGE_HEATMAPS for uploads), error-to-status
mapping and per-method latency are the shared interceptor's
(``heatmap.grpc_server``); handlers raise ``heatmap.errors`` exceptions.
Blocking work (ClickHouse calls, the object store, PNG decoding, rendering)
runs in worker threads so the event loop keeps serving; image decodes and
renders go through one ``backdrops.DecodeGate`` (HEATMAP_RENDER_MAX_CONCURRENT
at once), so their memory is bounded whatever the number of callers.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import numpy.typing as npt
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError
from clickhouse_connect.driver.npquery import NumpyResult
from PIL import Image
from prometheus_client import CollectorRegistry

from heatmap.auth import VIEW_USER_HEATMAPS, current_principal
from heatmap.clickhouse import ClickHouseUnavailable, connect
from heatmap.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from heatmap.settings import Settings
from query_api import backdrops, erasure, heatmap_query, point_encoding, render, screens_query
from query_api.clickhouse_errors import clickhouse_error
from query_api.metrics import QueryMetrics
from query_api.png_check import PngInfo, check_header, decode_png
from query_api.point_encoding import EncodedReply
from query_api.screenshots import (
    FileScreenshotStore,
    S3ScreenshotStore,
    Screenshot,
    ScreenshotStore,
)
from schemas.api import SERVICE
from schemas.heatmap.v1 import heatmap_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")
START_TIMEOUT_S = 30.0
# Object-store listings at once for one ListScreens (one per listed screen).
SCREEN_LISTINGS_AT_ONCE = 8


class CallContext(Protocol):
    """What a handler needs of its call: a gRPC ServicerContext, or the HTTP
    transport's adapter (``query_api.explorer.connect_app``)."""

    def time_remaining(self) -> float | None: ...


class QueryService:
    """heatmap.serve.Component for the query side of HeatmapService."""

    name = "query-api"

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        clickhouse_client: Client | None = None,
        screenshots: ScreenshotStore | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = QueryMetrics(registry)
        self._client = clickhouse_client
        self._owns_client = clickhouse_client is None
        self._store = screenshots
        self._owns_store = screenshots is None
        self._running = False
        self._images = backdrops.DecodeGate(settings.query.render_max_concurrent)
        self._deriving: dict[str, asyncio.Future[bytes | None]] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._client is None:
            self._settings.require_clickhouse()
            try:
                self._client = await asyncio.wait_for(
                    asyncio.to_thread(connect, self._settings.clickhouse), START_TIMEOUT_S
                )
            except TimeoutError as e:
                raise ClickHouseUnavailable("ClickHouse did not answer in time") from e
        if self._store is None:
            self._settings.require_screenshot_store()
            if self._settings.s3.endpoint:
                self._store = S3ScreenshotStore(self._settings.s3)
            else:
                assert self._settings.screenshot_dir is not None
                self._store = FileScreenshotStore(self._settings.screenshot_dir)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._store.ensure_ready), START_TIMEOUT_S)
        except TimeoutError as e:
            raise Unavailable("screenshot store did not answer in time") from e
        self._running = True
        logger.info("query service ready (%s)", type(self._store).__name__)

    def healthy(self) -> bool:
        return self._running

    async def stop(self) -> None:
        self._running = False
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None

    def handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        def unary(fn: Callable[..., Any], req: Any, resp: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=req.FromString,
                response_serializer=resp.SerializeToString,
            )

        pb = heatmap_pb2
        return [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    # Answered as bytes already written (point_encoding.EncodedReply).
                    "QueryHeatmapData": grpc.unary_unary_rpc_method_handler(
                        self.QueryHeatmapData,
                        request_deserializer=pb.QueryHeatmapDataRequest.FromString,
                        response_serializer=point_encoding.serialize,
                    ),
                    "ListScreenshots": unary(
                        self.ListScreenshots, pb.ListScreenshotsRequest, pb.ListScreenshotsResponse
                    ),
                    "UploadScreenshot": unary(
                        self.UploadScreenshot,
                        pb.UploadScreenshotRequest,
                        pb.UploadScreenshotResponse,
                    ),
                    "GetScreenshot": unary(
                        self.GetScreenshot, pb.GetScreenshotRequest, pb.GetScreenshotResponse
                    ),
                    "RenderHeatmap": unary(
                        self.RenderHeatmap, pb.RenderHeatmapRequest, pb.RenderHeatmapResponse
                    ),
                    "ListScreens": unary(
                        self.ListScreens, pb.ListScreensRequest, pb.ListScreensResponse
                    ),
                    "EraseUserData": unary(
                        self.EraseUserData, pb.EraseUserDataRequest, pb.EraseUserDataResponse
                    ),
                },
            )
        ]

    # ------------------------------------------------------------- helpers

    @property
    def store(self) -> ScreenshotStore:
        if self._store is None:
            raise Unavailable("query service is not started")
        return self._store

    async def _store_call(self, op: str, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await asyncio.to_thread(fn, *args)
        finally:
            self._metrics.store_seconds.labels(op).observe(time.perf_counter() - started)

    async def query(
        self,
        request: heatmap_pb2.QueryHeatmapDataRequest,
        field: str = "",
        context: CallContext | None = None,
    ) -> EncodedReply:
        """Validate, run and shape one heatmap query (shared by QueryHeatmapData and render).

        With top_users, two statements: the ranking, then the kept users' cells.
        """
        spec = heatmap_query.parse_request(request, field)
        if heatmap_query.is_empty(spec):
            return EncodedReply(heatmap_pb2.QueryHeatmapDataResponse(grid_size=spec.grid_size))
        limit = self._settings.query.max_per_user_points
        ranking = None
        users = None
        if spec.top_users:
            rows = await self._sql(heatmap_query.plan_top_users(spec), context)
            ranking = heatmap_query.ranking_from_rows(rows)
            users = ranking.user_ids
            if not users:
                return heatmap_query.build_answer(spec, [], limit, ranking)
        k = self._settings.query.min_users_per_cell
        if k and spec.per_user and VIEW_USER_HEATMAPS not in current_principal().permissions:
            raise PermissionDenied(
                f"PER_USER requires {VIEW_USER_HEATMAPS} while k-anonymity is on "
                f"(HEATMAP_MIN_USERS_PER_CELL={k})"
            )
        unique = None
        # ALL_USERS rows are integers only: read as numpy arrays, not Python lists.
        numeric = not spec.per_user
        if spec.per_user or not (spec.unique_users or k):
            rows = await self._sql(heatmap_query.plan(spec, limit, users), context, numeric)
        else:
            rows, unique = await asyncio.gather(
                self._sql(heatmap_query.plan(spec, limit, users), context, numeric),
                self._sql(heatmap_query.plan_unique_users(spec), context, numeric),
            )
        reply = heatmap_query.build_answer(
            spec, rows, limit, ranking, unique, 0 if spec.per_user else k
        )
        self._metrics.points.labels("per_user" if spec.per_user else "all_users").observe(
            reply.point_count
        )
        return reply

    async def _sql(
        self, plan: heatmap_query.Plan, context: CallContext | None, numeric: bool = False
    ) -> Sequence[Sequence[Any]]:
        """Run one planned statement; its rows column-wise (``numeric``: as numpy
        arrays). ClickHouse's max_execution_time is the configured bound,
        lowered to the caller's remaining deadline when that is shorter."""
        client = self._client
        if client is None:
            raise Unavailable("query service is not started")
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(
                client.query,
                plan.sql,
                parameters=plan.parameters,
                settings={"max_execution_time": _time_budget(self._settings, context)},
                use_numpy=numeric,
            )
        except (DatabaseError, OSError) as e:
            raise clickhouse_error(e) from e
        finally:
            self._metrics.clickhouse_seconds.labels(plan.table).observe(
                time.perf_counter() - started
            )
        summary = result.summary or {}
        self._metrics.rows_read.labels(plan.table).inc(int(summary.get("read_rows", 0) or 0))
        self._metrics.bytes_read.labels(plan.table).inc(int(summary.get("read_bytes", 0) or 0))
        if isinstance(result, NumpyResult):  # asked for with use_numpy
            return _numpy_columns(result.np_result)
        columns: Sequence[Sequence[Any]] = result.result_columns
        return columns

    # ------------------------------------------------------------ handlers

    async def QueryHeatmapData(
        self, request: heatmap_pb2.QueryHeatmapDataRequest, context: CallContext
    ) -> EncodedReply:
        return await self.query(request, context=context)

    async def EraseUserData(
        self, request: heatmap_pb2.EraseUserDataRequest, context: CallContext
    ) -> heatmap_pb2.EraseUserDataResponse:
        client = self._client
        if client is None:
            raise Unavailable("query service is not started")
        if not self._settings.kafka.bootstrap:
            raise Unavailable("erasure needs the worker group's Kafka (HEATMAP_KAFKA_BOOTSTRAP)")
        who = current_principal().user_id
        return await asyncio.to_thread(
            erasure.erase_user_data, client, self._settings.kafka, request, who
        )

    async def ListScreens(
        self, request: heatmap_pb2.ListScreensRequest, context: CallContext
    ) -> heatmap_pb2.ListScreensResponse:
        spec = screens_query.parse_request(request)
        if spec.empty_range:
            return heatmap_pb2.ListScreensResponse()
        rows = await self._sql(screens_query.plan(spec), context)
        counts, truncated = screens_query.counts_from_rows(spec, rows)
        store = self.store
        gate = asyncio.Semaphore(SCREEN_LISTINGS_AT_ONCE)

        async def newest(screen: str) -> Screenshot | None:
            async with gate:
                shots = await self._store_call("list", store.list, screen)
            return shots[0] if shots else None

        shots = await asyncio.gather(*(newest(name) for name, _ in counts))
        response = heatmap_pb2.ListScreensResponse(truncated=truncated)
        for (name, n), shot in zip(counts, shots, strict=True):
            summary = response.screens.add(screen_name=name, event_count=n)
            if shot is not None:
                summary.has_screenshot = True
                summary.newest_screenshot_id = shot.screenshot_id
                summary.newest_screenshot_width = shot.width
                summary.newest_screenshot_height = shot.height
        return response

    async def ListScreenshots(
        self, request: heatmap_pb2.ListScreenshotsRequest, context: CallContext
    ) -> heatmap_pb2.ListScreenshotsResponse:
        _check_screen_name(request.screen_name)
        store = self.store
        shots = await self._store_call("list", store.list, request.screen_name)
        return heatmap_pb2.ListScreenshotsResponse(
            screenshots=[s.to_proto(store.download_url(s)) for s in shots]
        )

    async def UploadScreenshot(
        self, request: heatmap_pb2.UploadScreenshotRequest, context: CallContext
    ) -> heatmap_pb2.UploadScreenshotResponse:
        _check_screen_name(request.screen_name)
        data = request.image_data
        check_header(data)  # hostile input is turned away before it waits for an image slot
        info, backdrop = await self._images.run(
            _validate_and_derive,
            data,
            request.width,
            request.height,
            max_wait_s=_remaining(context),
        )
        store = self.store
        candidate = Screenshot.new(
            request.screen_name, data, info.width, info.height, current_principal().user_id
        )
        stored = await self._store_call("put", store.put, candidate, data, backdrop)
        self._metrics.uploads.labels("stored" if stored is candidate else "duplicate").inc()
        return heatmap_pb2.UploadScreenshotResponse(
            screenshot=stored.to_proto(store.download_url(stored))
        )

    async def GetScreenshot(
        self, request: heatmap_pb2.GetScreenshotRequest, context: CallContext
    ) -> heatmap_pb2.GetScreenshotResponse:
        if not request.screenshot_id:
            raise InvalidArgument([FieldViolation("screenshot_id", "is required")])
        store = self.store
        found = await self._store_call("read", store.read, request.screenshot_id)
        if found is None:
            raise NotFound(f"screenshot {request.screenshot_id!r} not found")
        shot, data = found
        return heatmap_pb2.GetScreenshotResponse(
            screenshot=shot.to_proto(store.download_url(shot)), image_data=data
        )

    async def RenderHeatmap(
        self, request: heatmap_pb2.RenderHeatmapRequest, context: CallContext
    ) -> heatmap_pb2.RenderHeatmapResponse:
        if (
            request.width < 0
            or 0 < request.width < render.MIN_WIDTH
            or (request.width > render.MAX_WIDTH)
        ):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "width",
                        f"is {request.width}; must be 0 (backdrop width) or "
                        f"{render.MIN_WIDTH}..{render.MAX_WIDTH}",
                    )
                ]
            )
        data = await self.query(request.query, field="query", context=context)
        backdrop = await self._backdrop(request.query.screen_name, request.screenshot_id, context)
        rendered = await self._images.run(
            _render, data, backdrop, request.width, max_wait_s=_remaining(context)
        )
        if len(rendered.png) > self._settings.server.max_message_bytes - 1024:
            raise ResourceExhausted(
                f"the rendered PNG ({len(rendered.png)} bytes) exceeds the message limit; "
                "ask for a smaller width"
            )
        return heatmap_pb2.RenderHeatmapResponse(
            png=rendered.png, width=rendered.width, height=rendered.height
        )

    async def _backdrop(
        self, screen_name: str, shot_id: str, context: CallContext
    ) -> _Backdrop | None:
        """What to draw on (the named or newest screenshot), or None for a blank canvas."""
        store = self.store
        if shot_id:
            named = await self._store_call("get", store.get, shot_id)
            shots = [named] if named is not None else []
        else:
            shots = await self._store_call("list", store.list, screen_name)
        for shot in shots:  # newest first; skip one deleted under our feet
            png = await self._backdrop_png(shot, context)
            if png is not None:
                return png, (shot.width, shot.height)
        if shot_id:
            raise NotFound(f"screenshot {shot_id!r} not found")
        return None

    async def _backdrop_png(self, shot: Screenshot, context: CallContext) -> bytes | None:
        store = self.store
        if not backdrops.needs_backdrop(shot.width, shot.height):
            return await self._store_call("read", store.read_image, shot.screenshot_id)
        png = await self._store_call("read", store.read_backdrop, shot.screenshot_id)
        if png is not None:
            return png
        # Stored before backdrops existed: derive once (concurrent renders share
        # the one derivation; shielded, so one caller giving up does not stop it).
        shot_id = shot.screenshot_id
        job = self._deriving.get(shot_id)
        if job is None:
            job = asyncio.ensure_future(self._derive_backdrop(shot_id, _remaining(context)))
            self._deriving[shot_id] = job
            job.add_done_callback(lambda done: _forget(self._deriving, shot_id, done))
        return await asyncio.shield(job)

    async def _derive_backdrop(self, shot_id: str, max_wait_s: float | None) -> bytes | None:
        store = self.store
        original = await self._store_call("read", store.read_image, shot_id)
        if original is None:
            return None
        png = await self._images.run(backdrops.derive_from_png, original, max_wait_s=max_wait_s)
        try:
            await self._store_call("put_backdrop", store.put_backdrop, shot_id, png)
        except Unavailable as e:  # the render can go on; the next one derives again
            logger.warning("could not store the backdrop of %s: %s", shot_id, e)
        return png


_Backdrop = tuple[bytes, tuple[int, int]]  # (PNG to draw on, the screenshot's own size)


def _forget(
    jobs: dict[str, asyncio.Future[bytes | None]], key: str, done: asyncio.Future[bytes | None]
) -> None:
    jobs.pop(key, None)
    if not done.cancelled():
        done.exception()  # retrieved: every waiter may have given up


def _remaining(context: CallContext | None) -> float | None:
    remaining = context.time_remaining() if context is not None else None
    return None if remaining is None else max(0.0, float(remaining))


def _validate_and_derive(data: bytes, width: int, height: int) -> tuple[PngInfo, bytes | None]:
    """The upload's one full decode: validity, and the backdrop if it needs one."""
    with decode_png(data, width, height) as image:
        info = PngInfo(image.width, image.height)
        if not backdrops.needs_backdrop(image.width, image.height):
            return info, None
        return info, backdrops.derive(image)


def _render(data: EncodedReply, backdrop: _Backdrop | None, width: int) -> render.Rendered:
    source = backdrop[1] if backdrop is not None else None
    out_w, out_h = render.output_size(width, source)
    if out_w > render.MAX_WIDTH or out_w * out_h > render.MAX_OUTPUT_PIXELS:
        raise InvalidArgument(
            [FieldViolation("width", f"output {out_w}x{out_h} is larger than allowed")]
        )
    image = None
    if backdrop is not None:
        image = Image.open(io.BytesIO(backdrop[0]), formats=["PNG"])
        image.load()
    xs, ys, counts = data.cells()
    try:
        return render.render(
            data.head.grid_size,
            xs,
            ys,
            counts,
            image,
            width,
            source_size=source,
        )
    finally:
        if image is not None:
            image.close()


def _numpy_columns(table: npt.NDArray[Any]) -> list[Any]:
    """clickhouse-connect's numpy result as one array per column: a structured array
    (mixed types), a 2-D one (one type) or, without rows, an empty 1-D one."""
    if table.dtype.names:
        return [table[name] for name in table.dtype.names]
    if table.ndim == 2:
        return [table[:, i] for i in range(table.shape[1])]
    return []


def _time_budget(settings: Settings, context: CallContext | None) -> float:
    budget = settings.clickhouse.max_execution_time_s
    remaining = context.time_remaining() if context is not None else None
    if remaining is not None:
        budget = min(budget, max(0.001, float(remaining)))
    return budget


def _check_screen_name(screen_name: str) -> None:
    if not screen_name:
        raise InvalidArgument([FieldViolation("screen_name", "is required")])
    if len(screen_name) > heatmap_query.MAX_SCREEN_NAME:
        raise InvalidArgument(
            [
                FieldViolation(
                    "screen_name", f"longer than {heatmap_query.MAX_SCREEN_NAME} characters"
                )
            ]
        )
