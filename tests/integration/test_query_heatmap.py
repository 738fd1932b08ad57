"""QueryHeatmapData through the real gRPC server on hand-built cell tables in chDB.

``insert_events`` writes the rows the stream worker would write for a list of
events into all three cell tables; ``expected`` computes the contract's answer
straight from the events (float32 coordinates, min(floor(v * g), g - 1)).
The server's answers must equal it exactly for every grid, filter and mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap.clickhouse import connect
from heatmap.settings import ClickHouseSettings, QuerySettings, Settings
from query_api.app import QueryService
from query_api.screenshots import ScreenshotStore
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import bad_request_fields, serving

H10 = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Ev:
    screen: str
    campaign: str
    type: int
    user: str
    ts: dt.datetime
    x: float
    y: float


# ----------------------------------------------------------------- helpers


def _cells(values: Sequence[float], grid: int) -> np.ndarray[Any, np.dtype[np.int64]]:
    v = np.asarray(values, dtype=np.float32)
    cells: np.ndarray[Any, np.dtype[np.int64]] = np.minimum(
        np.floor(v * np.float32(grid)).astype(np.int64), grid - 1
    )
    return cells


def _hour(ts: dt.datetime) -> dt.datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def insert_events(settings: ClickHouseSettings, events: Sequence[Ev], parts: int = 2) -> None:
    """Rows for ``events`` in touch_cells_by_user, touch_cells and touch_cells_64.

    Events are aggregated per key like a worker flush and written in ``parts``
    inserts, so the same key appears in several parts and reads must sum().
    A marker row (screen '') goes along, as a real flush writes one.
    """
    client = connect(settings)
    try:
        for part in range(parts):
            chunk = events[part::parts]
            if not chunk:
                continue
            cx512, cy512 = _cells([e.x for e in chunk], 512), _cells([e.y for e in chunk], 512)
            cx64, cy64 = _cells([e.x for e in chunk], 64), _cells([e.y for e in chunk], 64)
            by_user: Counter[tuple[Any, ...]] = Counter()
            all_users: Counter[tuple[Any, ...]] = Counter()
            all_64: Counter[tuple[Any, ...]] = Counter()
            for i, e in enumerate(chunk):
                h = _hour(e.ts)
                by_user[
                    (e.screen, e.user, e.campaign, e.type, h, int(cx512[i]), int(cy512[i]))
                ] += 1
                all_users[(e.screen, e.campaign, e.type, h, int(cx512[i]), int(cy512[i]))] += 1
                all_64[(e.screen, e.campaign, e.type, h, int(cx64[i]), int(cy64[i]))] += 1
            marker_hour = _hour(chunk[0].ts)
            cols = ["campaign_id", "event_type", "hour", "cell_x", "cell_y"]
            client.insert(
                "touch_cells_by_user",
                [[*k, n, 0] for k, n in by_user.items()]
                + [["", "", f"t#{part}", 0, marker_hour, 0, 0, 0, 99]],
                column_names=["screen_name", "user_id", *cols, "events", "source_offset"],
            )
            for table, rows in (("touch_cells", all_users), ("touch_cells_64", all_64)):
                client.insert(
                    table,
                    [[*k, n, 0] for k, n in rows.items()]
                    + [["", f"t#{part}", 0, marker_hour, 0, 0, 0, 99]],
                    column_names=["screen_name", *cols, "events", "source_offset"],
                )
    finally:
        client.close()


@dataclass(frozen=True)
class Filters:
    screen: str = "Home"
    campaign: str = ""
    user: str = ""
    types: tuple[int, ...] = ()
    start: dt.datetime | None = None
    end: dt.datetime | None = None


def expected(
    events: Sequence[Ev], f: Filters, grid: int
) -> tuple[dict[tuple[int, int], int], dict[str, dict[tuple[int, int], int]]]:
    """(cell -> count for ALL_USERS, user -> cell -> count for PER_USER) per the contract."""
    chosen = [
        e
        for e in events
        if e.screen == f.screen
        and (not f.campaign or e.campaign == f.campaign)
        and (not f.user or e.user == f.user)
        and (not f.types or e.type in f.types)
        and (f.start is None or _hour(e.ts) >= f.start)
        and (f.end is None or _hour(e.ts) < f.end)
    ]
    cx, cy = _cells([e.x for e in chosen], grid), _cells([e.y for e in chosen], grid)
    cells: dict[tuple[int, int], int] = defaultdict(int)
    per_user: dict[str, dict[tuple[int, int], int]] = defaultdict(lambda: defaultdict(int))
    for i, e in enumerate(chosen):
        cells[(int(cx[i]), int(cy[i]))] += 1
        per_user[e.user][(int(cx[i]), int(cy[i]))] += 1
    return dict(cells), {u: dict(c) for u, c in per_user.items()}


def ts(value: dt.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def request_for(f: Filters, grid: int, mode: int) -> pb.QueryHeatmapDataRequest:
    request = pb.QueryHeatmapDataRequest(
        screen_name=f.screen,
        campaign_id=f.campaign,
        user_id=f.user,
        event_types=list(f.types),  # type: ignore[arg-type]
        grid_size=grid,
        mode=mode,  # type: ignore[arg-type]
    )
    if f.start is not None:
        request.start_time.CopyFrom(ts(f.start))
    if f.end is not None:
        request.end_time.CopyFrom(ts(f.end))
    return request


def md(*permissions: str, user: str = "analyst") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(TEST_JWT_SECRET, user, permissions)}"),)


VIEW = md(VIEW_HEATMAPS)


@contextlib.asynccontextmanager
async def query_api(
    settings: Settings,
    screenshots: ScreenshotStore | None = None,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[tuple[grpc.aio.Channel, QueryService, str]]:
    """(channel, service, target): QueryService behind heatmap.serve on loopback."""
    registry = registry or CollectorRegistry()
    service = QueryService(settings, registry, screenshots=screenshots)
    options = [
        ("grpc.max_send_message_length", 32 << 20),
        ("grpc.max_receive_message_length", 32 << 20),
    ]
    async with serving(settings, [service], registry) as port:
        target = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(target, options=options) as ch:
            yield ch, service, target


@pytest.fixture
def settings(base_settings: Settings, clickhouse: ClickHouseSettings, tmp_path: Path) -> Settings:
    return replace(base_settings, clickhouse=clickhouse, screenshot_dir=tmp_path / "shots")


def make_events(seed: int = 3, n: int = 400) -> list[Ev]:
    rng = random.Random(seed)
    edges = [0.0, 1.0, 0.5, 0.125, 0.9999999, 1 / 3, 0.00195312, 0.001953125]
    events = []
    for _ in range(n):
        x = rng.choice(edges) if rng.random() < 0.2 else rng.random()
        y = rng.choice(edges) if rng.random() < 0.2 else rng.betavariate(2, 5)
        events.append(
            Ev(
                screen=rng.choice(["Home", "Home", "Home", "Cart"]),
                campaign=rng.choice(["", "", "c1", "c2"]),
                type=rng.choice([1, 1, 1, 2, 3]),
                user=rng.choice(["u1", "u1", "u1", "u2", "u2", "u3"]),
                ts=H10 + dt.timedelta(seconds=rng.randrange(-3600, 3 * 3600)),
                x=x,
                y=y,
            )
        )
    # The hour edges of the contract's example: 10:59:59 and 11:00:00.
    events.append(Ev("Home", "", 1, "edge", H10 + dt.timedelta(seconds=3599), 0.05, 0.05))
    events.append(Ev("Home", "", 1, "edge", H10 + dt.timedelta(hours=1), 0.95, 0.95))
    return events


def check(
    response: pb.QueryHeatmapDataResponse, events: list[Ev], f: Filters, grid: int, mode: int
) -> None:
    g = grid or 64
    cells, per_user = expected(events, f, g)
    assert response.grid_size == g
    if mode == pb.PER_USER:
        got = {
            (p.user_id, round(p.x * g - 0.5), round(p.y * g - 0.5)): p.count
            for p in response.data_points
        }
        want = {(u, cx, cy): n for u, c in per_user.items() for (cx, cy), n in c.items()}
        assert got == want
        assert len(response.data_points) == len(want)
        totals = [(u.user_id, u.touch_count) for u in response.user_touch_counts]
        want_totals = sorted(
            ((u, sum(c.values())) for u, c in per_user.items()), key=lambda t: (-t[1], t[0])
        )
        assert totals == want_totals
    else:
        got_cells = {
            (round(p.x * g - 0.5), round(p.y * g - 0.5)): p.count for p in response.data_points
        }
        assert got_cells == cells
        assert len(response.data_points) == len(cells)
        assert all(p.user_id == "" for p in response.data_points)
        assert not response.user_touch_counts
    for p in response.data_points:  # cell centres exactly as the contract says
        assert p.x == pytest.approx((round(p.x * g - 0.5) + 0.5) / g, abs=1e-7)
        assert p.count > 0
    assert response.total_count == sum(cells.values())


# ------------------------------------------------------------------- tests


async def test_exact_counts_every_grid_filter_and_mode(settings: Settings) -> None:
    events = make_events()
    insert_events(settings.clickhouse, events)
    h11, h12 = H10 + dt.timedelta(hours=1), H10 + dt.timedelta(hours=2)
    filter_sets = [
        Filters(campaign=c, user=u, types=t, start=s, end=e)
        for c, u, t, (s, e) in itertools.product(
            ["", "c1"],
            ["", "u2"],
            [(), (1,), (2, 3)],
            [(None, None), (h11, None), (None, h11), (H10, h12)],
        )
    ]
    filter_sets.append(Filters(screen="Cart", campaign="c2", types=(1,)))
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for grid in (8, 64, 512, 0, 128):
            for f in filter_sets:
                for mode in (pb.ALL_USERS, pb.PER_USER, pb.HEATMAP_MODE_UNSPECIFIED):
                    if grid in (0, 128) and (f.types or f.campaign):
                        continue  # spot checks only at these sizes
                    response = await stub.QueryHeatmapData(
                        request_for(f, grid, mode), metadata=VIEW
                    )
                    check(response, events, f, grid, mode)


async def test_hand_checked_cells_and_hour_edges(settings: Settings) -> None:
    events = [
        Ev("Home", "", 1, "a", H10 + dt.timedelta(seconds=3599), 0.0, 0.0),  # 10:59:59
        Ev("Home", "", 1, "a", H10 + dt.timedelta(hours=1), 1.0, 1.0),  # 11:00:00
        Ev("Home", "", 2, "b", H10 + dt.timedelta(hours=1, minutes=30), 0.5, 0.125),
        Ev("Home", "", 2, "b", H10 + dt.timedelta(hours=1, minutes=31), 0.5, 0.125),
    ]
    insert_events(settings.clickhouse, events)
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        h11 = H10 + dt.timedelta(hours=1)
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=8, start_time=ts(h11)),
            metadata=VIEW,
        )
        assert [(p.x, p.y, p.count) for p in r.data_points] == [
            (0.5625, 0.1875, 2),
            (0.9375, 0.9375, 1),
        ]
        assert r.total_count == 3
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=8, end_time=ts(h11)),
            metadata=VIEW,
        )
        assert [(p.x, p.y, p.count) for p in r.data_points] == [(0.0625, 0.0625, 1)]
        # A start inside the 11:00 hour excludes that hour: its start is before start_time.
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(
                screen_name="Home", start_time=ts(h11 + dt.timedelta(seconds=1))
            ),
            metadata=VIEW,
        )
        assert r.total_count == 0
        assert not r.data_points
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=512, mode=pb.PER_USER),
            metadata=VIEW,
        )
        assert [(u.user_id, u.touch_count) for u in r.user_touch_counts] == [("a", 2), ("b", 2)]
        assert [(p.user_id, p.x, p.y, p.count) for p in r.data_points] == [
            ("a", 0.5 / 512, 0.5 / 512, 1),
            ("a", 511.5 / 512, 511.5 / 512, 1),
            ("b", 256.5 / 512, 64.5 / 512, 2),
        ]
        assert r.grid_size == 512
        # Unknown screen: an empty answer, not an error.
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="NoSuchScreen"), metadata=VIEW
        )
        assert (len(r.data_points), r.total_count, r.grid_size) == (0, 0, 64)


async def test_per_user_ordering_highest_first(settings: Settings) -> None:
    t = H10
    events = (
        [Ev("Home", "", 1, "few", t, 0.1, 0.1)]
        + [Ev("Home", "", 1, "many", t, 0.2 + i / 100, 0.2) for i in range(5)]
        + [Ev("Home", "", 1, "mid", t, 0.3, 0.3) for _ in range(3)]
    )
    insert_events(settings.clickhouse, events)
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER, grid_size=64),
            metadata=VIEW,
        )
        assert [(u.user_id, u.touch_count) for u in r.user_touch_counts] == [
            ("many", 5),
            ("mid", 3),
            ("few", 1),
        ]
        assert next(p.user_id for p in r.data_points) == "many"
        assert r.total_count == 9


async def test_per_user_answer_is_bounded(settings: Settings) -> None:
    events = [Ev("Home", "", 1, f"user-{i}", H10, i / 10, 0.5) for i in range(10)]
    insert_events(settings.clickhouse, events)
    small = replace(settings, query=QuerySettings(max_per_user_points=9))
    async with query_api(small) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.QueryHeatmapData(
                pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER), metadata=VIEW
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "9 points" in (err.value.details() or "")
        # Narrowed to one user it fits; ALL_USERS is not bounded by this limit.
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER, user_id="user-3"),
            metadata=VIEW,
        )
        assert r.total_count == 1
        r = await stub.QueryHeatmapData(
            pb.QueryHeatmapDataRequest(screen_name="Home"), metadata=VIEW
        )
        assert r.total_count == 10


async def test_invalid_requests_name_the_field(settings: Settings) -> None:
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for request, field in [
            (pb.QueryHeatmapDataRequest(screen_name=""), "screen_name"),
            (pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=100), "grid_size"),
            (pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=1024), "grid_size"),
            (
                pb.QueryHeatmapDataRequest(
                    screen_name="Home", event_types=[pb.TOUCH_EVENT_TYPE_UNSPECIFIED]
                ),
                "event_types[0]",
            ),
        ]:
            call = stub.QueryHeatmapData(request, metadata=VIEW)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await bad_request_fields(call) == [field]


async def test_auth_health_reflection_and_metrics(settings: Settings) -> None:
    insert_events(settings.clickhouse, make_events(n=50))
    registry = CollectorRegistry()
    async with query_api(settings, registry=registry) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        request = pb.QueryHeatmapDataRequest(screen_name="Home")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.QueryHeatmapData(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.QueryHeatmapData(request, metadata=md(MANAGE_HEATMAPS))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.UploadScreenshot(
                pb.UploadScreenshotRequest(screen_name="Home", image_data=b"x"), metadata=VIEW
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListScreenshots(pb.ListScreenshotsRequest(screen_name="Home"), metadata=md())
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await stub.QueryHeatmapData(request, metadata=VIEW)).total_count > 0

        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(40):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for reply in call for s in reply.list_services_response.service]
        assert "heatmap.v1.HeatmapService" in services

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return got or 0.0

    assert value("heatmap_query_rows_read_total", table="touch_cells_64") > 0
    assert value("heatmap_rpc_duration_seconds_count", method="QueryHeatmapData", code="OK") == 1
    assert (
        value(
            "heatmap_rpc_duration_seconds_count",
            method="QueryHeatmapData",
            code="PERMISSION_DENIED",
        )
        == 1
    )
