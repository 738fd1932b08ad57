"""QueryHeatmapData validation and SQL planning (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from heatmap.errors import InvalidArgument, ResourceExhausted
from query_api.heatmap_query import build_response, parse_request, plan
from schemas.heatmap.v1 import heatmap_pb2 as pb


def req(**kwargs: object) -> pb.QueryHeatmapDataRequest:
    kwargs.setdefault("screen_name", "Home")
    return pb.QueryHeatmapDataRequest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("grid", [8, 16, 32, 64, 128, 256, 512])
def test_valid_grid_sizes(grid: int) -> None:
    assert parse_request(req(grid_size=grid)).grid_size == grid


def test_zero_grid_means_64() -> None:
    assert parse_request(req()).grid_size == 64


@pytest.mark.parametrize("grid", [-8, 1, 4, 7, 9, 48, 100, 1024, 2**30])
def test_invalid_grid_sizes(grid: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_request(req(grid_size=grid))
    assert [v.field for v in err.value.violations] == ["grid_size"]


def test_empty_screen_and_bad_enums_name_each_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_request(req(screen_name="", event_types=[1, 0, 7], mode=9, grid_size=3))
    assert [v.field for v in err.value.violations] == [
        "screen_name",
        "grid_size",
        "mode",
        "event_types[1]",
        "event_types[2]",
    ]
    with pytest.raises(InvalidArgument) as err:
        parse_request(req(screen_name=""), field="query")
    assert err.value.violations[0].field == "query.screen_name"


def test_end_before_start_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_request(
            req(
                start_time=timestamp_pb2.Timestamp(seconds=7200),
                end_time=timestamp_pb2.Timestamp(seconds=3600),
            )
        )
    assert err.value.violations[0].field == "end_time"


def test_times_round_up_to_whole_seconds() -> None:
    spec = parse_request(
        req(
            start_time=timestamp_pb2.Timestamp(seconds=3600, nanos=1),
            end_time=timestamp_pb2.Timestamp(seconds=7200),
        )
    )
    # hour >= 3600.000000001 <=> hour >= 3601 (hour is whole seconds)
    assert (spec.start_s, spec.end_s) == (3601, 7200)


def test_table_choice_and_bound_parameters() -> None:
    hostile = "Home'; DROP TABLE touch_cells; --"
    cases = [
        (req(grid_size=8), "touch_cells_64", 8),
        (req(grid_size=64), "touch_cells_64", 1),
        (req(grid_size=128), "touch_cells", 4),
        (req(grid_size=512), "touch_cells", 1),
        (req(grid_size=8, user_id="u"), "touch_cells_by_user", 64),
        (req(grid_size=512, mode=pb.PER_USER), "touch_cells_by_user", 1),
    ]
    for request, table, div in cases:
        p = plan(parse_request(request), 100)
        assert p.table == table
        assert p.parameters["div"] == div
        assert f"FROM {table} " in p.sql
    p = plan(
        parse_request(
            req(screen_name=hostile, campaign_id=hostile, user_id=hostile, event_types=[2, 1])
        ),
        100,
    )
    assert hostile not in p.sql
    assert p.parameters["screen"] == p.parameters["campaign"] == p.parameters["user"] == hostile
    assert p.parameters["types"] == [1, 2]


def test_per_user_response_order_and_bound() -> None:
    spec = parse_request(req(grid_size=8, mode=pb.PER_USER))
    columns: list[list[Any]] = [["b", "a", "a", "c"], [0, 1, 0, 7], [0, 0, 0, 7], [2, 1, 1, 2]]
    response = build_response(spec, columns, 10)
    assert [(u.user_id, u.touch_count) for u in response.user_touch_counts] == [
        ("a", 2),
        ("b", 2),
        ("c", 2),
    ]
    assert [p.user_id for p in response.data_points] == ["a", "a", "b", "c"]
    assert response.total_count == 6
    assert response.data_points[3].x == pytest.approx(7.5 / 8)
    with pytest.raises(ResourceExhausted):
        build_response(spec, columns, 3)


def test_all_users_points_encoded_like_protobuf_does() -> None:
    spec = parse_request(req(grid_size=8))
    keys = [63, 0, 9, 8, 1]
    counts = [1, 127, 128, 16384, 2**40]
    response = build_response(spec, [keys, counts], 10)
    want = [
        pb.HeatmapDataPoint(x=(k % 8 + 0.5) / 8, y=(k // 8 + 0.5) / 8, count=c)
        for k, c in sorted(zip(keys, counts, strict=True))
    ]
    assert list(response.data_points) == want
    assert response.total_count == sum(counts)
    assert response.grid_size == 8
    assert (
        response.SerializeToString()
        == pb.QueryHeatmapDataResponse(
            data_points=want, total_count=sum(counts), grid_size=8
        ).SerializeToString()
    )
    empty = build_response(spec, [[], []], 10)
    assert (len(empty.data_points), empty.total_count) == (0, 0)
