"""ListScreens and PER_USER top_users through the real gRPC server on chDB.

The expected answers are computed from the event list itself (the same
events ``insert_events`` writes as a worker flush would), never typed in.
"""

from __future__ import annotations

import datetime as dt
import io
import random
from collections import Counter
from dataclasses import replace

import grpc
import pytest
from PIL import Image

from heatmap.settings import QuerySettings, Settings
from query_api.screenshots import FileScreenshotStore, Screenshot
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.grpc_support import bad_request_fields
from tests.integration.test_query_heatmap import (
    H10,
    VIEW,
    Ev,
    Filters,
    _hour,
    check,
    expected,
    insert_events,
    md,
    query_api,
    request_for,
    settings,
    ts,
)

__all__ = ["settings"]  # the fixture, re-used


def png_bytes(width: int, height: int, shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (shade, shade, shade)).save(out, format="PNG")
    return out.getvalue()


def screen_events(seed: int = 11) -> list[Ev]:
    rng = random.Random(seed)
    screens = ["Home", "Cart", "Checkout", "home/settings", "Profile"]
    weights = [50, 20, 12, 8, 3]
    return [
        Ev(
            screen=rng.choices(screens, weights)[0],
            campaign=rng.choice(["", "c1", "c2"]),
            type=rng.choice([1, 2, 3]),
            user=f"u{rng.randrange(6)}",
            ts=H10 + dt.timedelta(seconds=rng.randrange(-2 * 3600, 3 * 3600)),
            x=rng.random(),
            y=rng.random(),
        )
        for _ in range(600)
    ]


def want_screens(
    events: list[Ev],
    campaign: str = "",
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
    contains: str = "",
) -> list[tuple[str, int]]:
    counts = Counter(
        e.screen
        for e in events
        if (not campaign or e.campaign == campaign)
        and (start is None or _hour(e.ts) >= start)
        and (end is None or _hour(e.ts) < end)
        and contains.lower() in e.screen.lower()
    )
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


async def test_list_screens_counts_filters_and_screenshots(settings: Settings) -> None:
    events = screen_events()
    insert_events(settings.clickhouse, events)
    # Two screenshots for Cart (the newer must be named), none for the others.
    assert settings.screenshot_dir is not None
    store = FileScreenshotStore(settings.screenshot_dir)
    store.ensure_ready()
    old_png, new_png = png_bytes(40, 80, 10), png_bytes(60, 130, 200)
    old = Screenshot.new("Cart", old_png, 40, 80, "t")
    old = replace(old, uploaded_at=old.uploaded_at - dt.timedelta(hours=1))
    new = Screenshot.new("Cart", new_png, 60, 130, "t")
    store.put(old, old_png)
    store.put(new, new_png)
    h11 = H10 + dt.timedelta(hours=1)
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        cases = [
            ({}, want_screens(events)),
            ({"campaign_id": "c1"}, want_screens(events, campaign="c1")),
            ({"start_time": ts(h11)}, want_screens(events, start=h11)),
            ({"end_time": ts(h11)}, want_screens(events, end=h11)),
            (
                {"start_time": ts(H10), "end_time": ts(h11), "campaign_id": "c2"},
                want_screens(events, campaign="c2", start=H10, end=h11),
            ),
            ({"name_contains": "HOME"}, want_screens(events, contains="home")),
        ]
        for fields, want in cases:
            r = await stub.ListScreens(pb.ListScreensRequest(**fields), metadata=VIEW)  # type: ignore[arg-type]
            assert [(s.screen_name, s.event_count) for s in r.screens] == want, fields
            assert not r.truncated
        r = await stub.ListScreens(pb.ListScreensRequest(), metadata=VIEW)
        by_name = {s.screen_name: s for s in r.screens}
        assert by_name["Cart"].has_screenshot
        assert by_name["Cart"].newest_screenshot_id == new.screenshot_id
        assert (
            by_name["Cart"].newest_screenshot_width,
            by_name["Cart"].newest_screenshot_height,
        ) == (60, 130)
        assert not by_name["Home"].has_screenshot
        assert by_name["Home"].newest_screenshot_id == ""
        # The limit cuts the most-events-first list and says so.
        r = await stub.ListScreens(pb.ListScreensRequest(limit=2), metadata=VIEW)
        assert [(s.screen_name, s.event_count) for s in r.screens] == want_screens(events)[:2]
        assert r.truncated
        # An empty range lists nothing; bad fields are named.
        r = await stub.ListScreens(
            pb.ListScreensRequest(start_time=ts(h11), end_time=ts(h11)), metadata=VIEW
        )
        assert list(r.screens) == []
        call = stub.ListScreens(
            pb.ListScreensRequest(limit=1001, campaign_id="c" * 201), metadata=VIEW
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert await bad_request_fields(call) == ["campaign_id", "limit"]
        # VIEW_HEATMAPS is needed, as for the other reads.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListScreens(pb.ListScreensRequest(), metadata=md("MANAGE_HEATMAPS"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def ranked(events: list[Ev], f: Filters, grid: int) -> list[tuple[str, int]]:
    _, per_user = expected(events, f, grid)
    totals = {u: sum(c.values()) for u, c in per_user.items()}
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


async def test_top_users_order_totals_and_cells(settings: Settings) -> None:
    rng = random.Random(5)
    # 12 users with distinct and tied totals: u00 has 30 touches, ties at 10.
    sizes = [30, 22, 17, 10, 10, 10, 6, 4, 3, 2, 1, 1]
    events = [
        Ev(
            "Home",
            rng.choice(["", "c1"]),
            rng.choice([1, 2]),
            f"u{i:02d}",
            H10,
            rng.random(),
            rng.random(),
        )
        for i, n in enumerate(sizes)
        for _ in range(n)
    ]
    insert_events(settings.clickhouse, events)
    # A limit the whole answer exceeds but the top 4 users fit under.
    _, per_user = expected(events, Filters(), 64)
    all_points = sum(len(c) for c in per_user.values())
    top4_points = sum(len(per_user[u]) for u, _ in ranked(events, Filters(), 64)[:4])
    limit = top4_points + 1
    assert all_points > limit
    small = replace(settings, query=QuerySettings(max_per_user_points=limit))
    async with query_api(small) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.QueryHeatmapData(
                pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER), metadata=VIEW
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for f, n in [(Filters(), 4), (Filters(campaign="c1"), 3), (Filters(types=(2,)), 5)]:
            order = ranked(events, f, 64)
            request = request_for(f, 64, pb.PER_USER)
            request.top_users = n
            r = await stub.QueryHeatmapData(request, metadata=VIEW)
            assert [(u.user_id, u.touch_count) for u in r.user_touch_counts] == order[:n]
            assert r.total_users == len(order)
            assert r.total_touches == sum(t for _, t in order)
            kept = {u for u, _ in order[:n]}
            want = {
                (u, cx, cy): c
                for u, cells in expected(events, f, 64)[1].items()
                if u in kept
                for (cx, cy), c in cells.items()
            }
            got = {
                (p.user_id, round(p.x * 64 - 0.5), round(p.y * 64 - 0.5)): p.count
                for p in r.data_points
            }
            assert got == want
            assert r.total_count == sum(t for _, t in order[:n])
        # Without top_users the totals are the answer's own.
        request = request_for(Filters(user="u03"), 64, pb.PER_USER)
        r = await stub.QueryHeatmapData(request, metadata=VIEW)
        check(r, events, Filters(user="u03"), 64, pb.PER_USER)
        assert (r.total_users, r.total_touches) == (1, 10)
        # top_users over the user count returns everyone; none matching: zeros.
        request = request_for(Filters(types=(3,)), 64, pb.PER_USER)
        request.top_users = 1000
        r = await stub.QueryHeatmapData(request, metadata=VIEW)
        assert (len(r.data_points), r.total_users, r.total_touches, r.total_count) == (0, 0, 0, 0)
        # Only for PER_USER, and bounded.
        for bad in (
            pb.QueryHeatmapDataRequest(screen_name="Home", top_users=3),
            pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER, top_users=1001),
            pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER, top_users=-1),
        ):
            call = stub.QueryHeatmapData(bad, metadata=VIEW)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await bad_request_fields(call) == ["top_users"]
