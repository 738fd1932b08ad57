"""Distinct users per cell and k-anonymity, through the real gRPC server on chDB.

The answers are compared with the distinct users computed straight from the
events, for several grids and filters.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from heatmap.auth import VIEW_HEATMAPS, VIEW_USER_HEATMAPS
from heatmap.settings import ClickHouseSettings, Settings
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.integration.test_query_heatmap import (
    H10,
    Ev,
    Filters,
    _cells,
    _hour,
    insert_events,
    make_events,
    md,
    query_api,
    request_for,
)

VIEW = md(VIEW_HEATMAPS)


@pytest.fixture
def settings(base_settings: Settings, clickhouse: ClickHouseSettings, tmp_path: Path) -> Settings:
    return replace(base_settings, clickhouse=clickhouse, screenshot_dir=tmp_path / "shots")


def events_of_many_users() -> list[Ev]:
    events = make_events(n=600)
    # More users, so that cells differ in how many saw them.
    return [replace(e, user=f"{e.user}-{i % 7}") for i, e in enumerate(events)]


def users_expected(
    events: list[Ev], f: Filters, grid: int
) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int], int]:
    """(cell -> distinct users, cell -> count, distinct users overall) per the contract."""
    chosen = [
        e
        for e in events
        if e.screen == f.screen
        and (not f.campaign or e.campaign == f.campaign)
        and (not f.types or e.type in f.types)
        and (f.start is None or _hour(e.ts) >= f.start)
        and (f.end is None or _hour(e.ts) < f.end)
    ]
    cx, cy = _cells([e.x for e in chosen], grid), _cells([e.y for e in chosen], grid)
    users: dict[tuple[int, int], set[str]] = defaultdict(set)
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for i, e in enumerate(chosen):
        users[(int(cx[i]), int(cy[i]))].add(e.user)
        counts[(int(cx[i]), int(cy[i]))] += 1
    return {c: len(u) for c, u in users.items()}, dict(counts), len({e.user for e in chosen})


def cell(p: pb.HeatmapDataPoint, g: int) -> tuple[int, int]:
    return round(p.x * g - 0.5), round(p.y * g - 0.5)


async def test_unique_users_per_cell_and_in_total_are_exact(settings: Settings) -> None:
    events = events_of_many_users()
    insert_events(settings.clickhouse, events, parts=3)
    cases = [
        Filters(),
        Filters(screen="Cart"),
        Filters(campaign="c1"),
        Filters(types=(1,)),
        Filters(start=H10, end=H10 + dt.timedelta(hours=2)),
    ]
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for f in cases:
            for grid in (8, 32, 64, 128, 512):
                request = request_for(f, grid, pb.ALL_USERS)
                request.unique_users = True
                reply = await stub.QueryHeatmapData(request, metadata=VIEW)
                users, counts, total = users_expected(events, f, grid)
                assert {cell(p, grid): p.unique_users for p in reply.data_points} == users
                assert {cell(p, grid): p.count for p in reply.data_points} == counts
                assert reply.unique_users == total, (f, grid)
                assert reply.suppressed_count == 0


async def test_k_anonymity_hides_cells_of_fewer_than_k_users(settings: Settings) -> None:
    events = events_of_many_users()
    insert_events(settings.clickhouse, events)
    k = 3
    anonymous = replace(settings, query=replace(settings.query, min_users_per_cell=k))
    async with query_api(anonymous) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for f in (Filters(), Filters(campaign="c2"), Filters(user="u1-0")):
            for grid in (16, 64, 512):
                reply = await stub.QueryHeatmapData(
                    request_for(f, grid, pb.ALL_USERS), metadata=VIEW
                )
                users, counts, _ = users_expected(
                    [e for e in events if not f.user or e.user == f.user], f, grid
                )
                shown = {c: n for c, n in counts.items() if users[c] >= k}
                hidden = {c: n for c, n in counts.items() if users[c] < k}
                assert {cell(p, grid): p.count for p in reply.data_points} == shown
                assert all(p.unique_users >= k for p in reply.data_points)
                assert reply.suppressed_count == sum(hidden.values())
                assert reply.suppressed_cells == len(hidden)
                assert reply.total_count == sum(counts.values())
        assert hidden, "the data must have cells below k for this test to mean anything"

        per_user = request_for(Filters(), 64, pb.PER_USER)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.QueryHeatmapData(per_user, metadata=VIEW)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert VIEW_USER_HEATMAPS in (denied.value.details() or "")
        allowed = await stub.QueryHeatmapData(
            per_user, metadata=md(VIEW_HEATMAPS, VIEW_USER_HEATMAPS)
        )
        assert allowed.data_points


async def test_without_k_nothing_is_hidden_and_unique_users_only_when_asked(
    settings: Settings,
) -> None:
    events = events_of_many_users()
    insert_events(settings.clickhouse, events)
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        reply = await stub.QueryHeatmapData(request_for(Filters(), 64, pb.ALL_USERS), metadata=VIEW)
        _, counts, _ = users_expected(events, Filters(), 64)
        assert len(reply.data_points) == len(counts)
        assert (reply.suppressed_count, reply.suppressed_cells) == (0, 0)
        assert reply.unique_users == 0
        assert all(p.unique_users == 0 for p in reply.data_points)
        per_user = await stub.QueryHeatmapData(
            request_for(Filters(), 64, pb.PER_USER), metadata=VIEW
        )
        assert per_user.data_points
