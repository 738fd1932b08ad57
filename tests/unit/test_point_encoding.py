"""ALL_USERS answers written from numpy are the bytes protobuf's own serializer writes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query_api.point_encoding import (
    TOTAL_USERS_KEY,
    dense,
    dense_users,
    encode_all_users,
    encode_points,
    varints,
)
from schemas.heatmap.v1 import heatmap_pb2 as pb

GRIDS = (8, 16, 32, 64, 128, 256, 512)
# Varint boundaries: each width's last and first value, and the int64 maximum.
EDGES = [1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**35, 2**56 - 1, 2**56, 2**63 - 1]
INT64 = st.one_of(st.sampled_from(EDGES), st.integers(1, 2**63 - 1), st.integers(1, 300))


def protobuf_answer(
    grid: int,
    cells: dict[int, tuple[int, int]],
    total_users: int | None,
    min_users: int,
) -> pb.QueryHeatmapDataResponse:
    """The answer built the plain way: one message per point, in key order."""
    reply = pb.QueryHeatmapDataResponse(grid_size=grid)
    total = 0
    for key in sorted(cells):
        count, users = cells[key]
        total += count
        if min_users and users < min_users:
            reply.suppressed_count += count
            reply.suppressed_cells += 1
            continue
        point = reply.data_points.add(
            x=(key % grid + 0.5) / grid, y=(key // grid + 0.5) / grid, count=count
        )
        if total_users is not None:
            point.unique_users = users
    reply.total_count = total
    if total_users is not None:
        reply.unique_users = total_users
    return reply


@st.composite
def point_sets(draw: st.DrawFn) -> tuple[int, dict[int, tuple[int, int]], int | None, int]:
    grid = draw(st.sampled_from(GRIDS))
    keys = draw(st.lists(st.integers(0, grid * grid - 1), unique=True, max_size=300))
    # A sum of counts must stay an int64 (the total): bound each by the share.
    bound = (2**63 - 1) // max(1, len(keys))
    counts = [min(draw(INT64), bound) for _ in keys]
    users = [draw(st.one_of(st.just(0), INT64)) for _ in keys]
    with_users = draw(st.booleans())
    total_users = draw(st.integers(0, 2**63 - 1)) if with_users else None
    min_users = draw(st.sampled_from([0, 0, 1, 2, 5, 200])) if with_users else 0
    return (
        grid,
        dict(zip(keys, zip(counts, users, strict=True), strict=True)),
        total_users,
        min_users,
    )


@settings(max_examples=300, deadline=None)
@given(point_sets())
def test_answer_bytes_equal_protobuf_serializer(
    case: tuple[int, dict[int, tuple[int, int]], int | None, int],
) -> None:
    grid, cells, total_users, min_users = case
    want = protobuf_answer(grid, cells, total_users, min_users)
    keys = list(cells)
    counts = dense(grid, keys, [cells[k][0] for k in keys])
    users = None
    if total_users is not None:
        # As ClickHouse answers: cells in any order, the total as one more row.
        rows = [
            [*reversed(keys), TOTAL_USERS_KEY],
            [*(cells[k][1] for k in reversed(keys)), total_users],
        ]
        users, total = dense_users(grid, rows)
        assert total == total_users
    reply = encode_all_users(grid, counts, users, total_users or 0, min_users)
    assert reply.SerializeToString() == want.SerializeToString()
    assert reply.message() == want
    assert reply.point_count == len(want.data_points)
    xs, ys, got_counts = reply.cells()
    assert xs == [p.x for p in want.data_points]
    assert ys == [p.y for p in want.data_points]
    assert got_counts == [p.count for p in want.data_points]


# Values the word-composed writer takes (counts below 2**56, users below 2**42), edges first.
WORD_EDGES = [1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**35, 2**42 - 1]
SMALL = st.one_of(st.sampled_from(WORD_EDGES), st.integers(1, 2**42 - 1), st.integers(1, 300))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(GRIDS),
    st.data(),
    st.sampled_from([1, 2**14, 2**56 - 1]),
    st.booleans(),
)
def test_word_writer_equals_byte_writer_and_protobuf(
    grid: int, data: st.DataObject, count_cap: int, with_users: bool
) -> None:
    keys = data.draw(st.lists(st.integers(0, grid * grid - 1), unique=True, min_size=1))
    counts = [min(data.draw(SMALL), count_cap) if count_cap > 1 else 1 for _ in keys]
    users = [data.draw(st.one_of(st.just(0), SMALL)) for _ in keys] if with_users else None
    order = np.array(sorted(keys), dtype=np.intp)
    by_key = dict(zip(keys, range(len(keys)), strict=True))
    c = np.array([counts[by_key[k]] for k in order], dtype=np.uint64)
    u = None if users is None else np.array([users[by_key[k]] for k in order], dtype=np.uint64)
    words = encode_points(grid, order, c, u)
    assert words == encode_points(grid, order, c, u, words=False)
    cells = {k: (counts[i], users[i] if users else 0) for i, k in enumerate(keys)}
    want = protobuf_answer(grid, cells, 0 if users else None, 0)
    assert words == want.SerializeToString()[: len(words)]
    assert pb.QueryHeatmapDataResponse.FromString(words).data_points == want.data_points


@pytest.mark.parametrize("value", [*EDGES, 0])
def test_varints_are_protobufs(value: int) -> None:
    octets, length = varints(np.array([value, 1], dtype=np.uint64), 10)
    want = pb.UserTouchCount(touch_count=value).SerializeToString()[1:]  # after the tag
    assert octets[0, : length[0]].tobytes() == (want or b"\x00")
    assert not octets[0, length[0] :].any()


def test_widest_point_and_no_points() -> None:
    # The int64 maximum as count and users: 9-byte varints, the longest point (length 31).
    grid = 512
    counts = dense(grid, [grid * grid - 1], [2**63 - 1])
    users = dense(grid, [grid * grid - 1], [2**63 - 1])
    reply = encode_all_users(grid, counts, users, 7)
    want = protobuf_answer(grid, {grid * grid - 1: (2**63 - 1, 2**63 - 1)}, 7, 0)
    assert reply.SerializeToString() == want.SerializeToString()
    assert reply.SerializeToString()[1] == 31
    empty = encode_all_users(64, dense(64, [], []), None)
    assert (
        empty.SerializeToString() == pb.QueryHeatmapDataResponse(grid_size=64).SerializeToString()
    )
    assert encode_points(8, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.uint64)) == b""
