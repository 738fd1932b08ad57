"""PER_USER answers written from columns are the bytes protobuf's own serializer writes."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heatmap.errors import ResourceExhausted
from query_api.heatmap_query import UserRanking, build_answer, parse_request
from query_api.point_encoding import encode_per_user
from schemas.event_rules import MAX_USER_ID
from schemas.heatmap.v1 import heatmap_pb2 as pb

GRIDS = (8, 16, 32, 64, 128, 256, 512)
EDGES = [1, 127, 128, 16383, 16384, 2**21, 2**35, 2**56 - 1, 2**56, 2**62]
# Ids as tokens carry them: any Unicode but surrogates (not valid UTF-8), the
# empty id (proto3 leaves it out) and ids whose UTF-8 needs a 2-byte length.
VALID = st.characters(exclude_categories=["Cs"])
USER_IDS = st.one_of(
    st.text(VALID, max_size=12),
    st.sampled_from(["", "a", "b", "é", "ä", "日本", "\U0001f600", "\x00", "a\x00"]),
    st.text(VALID, min_size=40, max_size=MAX_USER_ID),
)


def protobuf_answer(
    grid: int,
    users: Sequence[str],
    gxs: Sequence[int],
    gys: Sequence[int],
    counts: Sequence[int],
    ranking: tuple[int, int] | None,
) -> pb.QueryHeatmapDataResponse:
    """The answer built the plain way: one message per point and per user."""
    response = pb.QueryHeatmapDataResponse(grid_size=grid)
    if ranking is not None:
        response.total_users, response.total_touches = ranking
    if not counts:
        return response
    totals: dict[str, int] = defaultdict(int)
    for user, count in zip(users, counts, strict=True):
        totals[user] += count
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    rank = {user: i for i, (user, _) in enumerate(ranked)}
    order = sorted(range(len(counts)), key=lambda i: (rank[users[i]], gys[i], gxs[i]))
    for i in order:
        response.data_points.add(
            x=(gxs[i] + 0.5) / grid, y=(gys[i] + 0.5) / grid, count=counts[i], user_id=users[i]
        )
    for user, total in ranked:
        response.user_touch_counts.add(user_id=user, touch_count=total)
    response.total_count = sum(totals.values())
    if ranking is None:
        response.total_users = len(ranked)
        response.total_touches = response.total_count
    return response


def as_column(users: list[str], kind: str) -> Any:
    """The user column as the service may get it: Python strs or pyarrow arrays."""
    if kind == "list":
        return users
    if kind == "dictionary":
        return pa.array(users, pa.string()).dictionary_encode()
    if kind == "chunked":
        half = len(users) // 2
        return pa.chunked_array([users[:half], users[half:]], pa.string())
    # A slice: the array's data starts past its buffers' beginning.
    padded = pa.array(["pad", *users], pa.large_string() if kind == "large" else pa.string())
    return padded.slice(1)


@st.composite
def rows(
    draw: st.DrawFn,
) -> tuple[int, list[str], list[int], list[int], list[int], tuple[int, int] | None, str]:
    grid = draw(st.sampled_from(GRIDS))
    people = draw(st.lists(USER_IDS, min_size=1, max_size=8, unique=True))
    cells = st.tuples(st.sampled_from(people), st.integers(0, grid - 1), st.integers(0, grid - 1))
    # (user, gx, gy) are a GROUP BY's keys: distinct.
    keys = draw(st.lists(cells, max_size=120, unique=True))
    # Every total stays an int64: bound each count by its share.
    bound = (2**63 - 1) // max(1, len(keys))
    value = st.one_of(st.sampled_from(EDGES), st.integers(1, 300), st.integers(1, 2**62))
    counts = [min(draw(value), bound) for _ in keys]
    if draw(st.booleans()):  # equal totals: the tie goes by user id
        counts = [7] * len(keys)
    ranking = draw(st.one_of(st.none(), st.tuples(st.integers(1, 10**6), st.integers(1, 2**62))))
    kind = draw(st.sampled_from(["list", "string", "large", "dictionary", "chunked"]))
    random.Random(draw(st.integers(0, 2**32))).shuffle(keys)  # rows come in any order
    return (
        grid,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        counts,
        ranking,
        kind,
    )


@settings(max_examples=300, deadline=None)
@given(rows())
def test_per_user_bytes_equal_protobuf_serializer(
    case: tuple[int, list[str], list[int], list[int], list[int], tuple[int, int] | None, str],
) -> None:
    grid, users, gxs, gys, counts, ranking, kind = case
    want = protobuf_answer(grid, users, gxs, gys, counts, ranking)
    reply = encode_per_user(grid, as_column(users, kind), gxs, gys, counts, ranking)
    assert reply.SerializeToString() == want.SerializeToString()
    assert reply.message() == want
    assert reply.point_count == len(want.data_points)
    xs, ys, got = reply.cells()
    assert (xs, ys, got) == (
        [p.x for p in want.data_points],
        [p.y for p in want.data_points],
        [p.count for p in want.data_points],
    )


def test_long_and_non_ascii_ids_and_ties() -> None:
    # 256 four-byte characters: 1,024 UTF-8 bytes, a 2-byte length in both
    # the point and the user's tally; equal totals ranked by id.
    long_id = "\U0001f600" * MAX_USER_ID
    users = ["zoë", long_id, "", "zoë", "Zoe", "日本"]
    gxs, gys, counts = [1, 2, 3, 0, 4, 5], [0, 0, 1, 7, 2, 3], [5, 10, 10, 5, 10, 10]
    want = protobuf_answer(8, users, gxs, gys, counts, None)
    assert [u.user_id for u in want.user_touch_counts] == ["", "Zoe", "zoë", "日本", long_id]
    reply = encode_per_user(8, users, gxs, gys, counts)
    assert reply.SerializeToString() == want.SerializeToString()


def request(**fields: Any) -> pb.QueryHeatmapDataRequest:
    return pb.QueryHeatmapDataRequest(screen_name="Home", mode=pb.PER_USER, **fields)


def test_empty_answers_keep_the_ranking_totals() -> None:
    spec = parse_request(request(grid_size=8, top_users=3))
    ranking = UserRanking(("u",), 4, 90)
    shapes: list[list[list[Any]]] = [[], [[], [], [], []]]
    for columns in shapes:
        reply = build_answer(spec, columns, 10, ranking)
        want = pb.QueryHeatmapDataResponse(grid_size=8, total_users=4, total_touches=90)
        assert reply.SerializeToString() == want.SerializeToString()
    empty = build_answer(parse_request(request(grid_size=8)), [], 10)
    assert empty.SerializeToString() == pb.QueryHeatmapDataResponse(grid_size=8).SerializeToString()


def test_the_limit_is_exact() -> None:
    spec = parse_request(request(grid_size=8))
    users, gxs, gys, counts = ["a", "b", "a"], [0, 1, 2], [0, 0, 0], [1, 2, 3]
    columns: list[list[Any]] = [users, gxs, gys, counts]
    reply = build_answer(spec, columns, 3)
    want = protobuf_answer(8, users, gxs, gys, counts, None)
    assert reply.SerializeToString() == want.SerializeToString()
    with pytest.raises(ResourceExhausted, match="exceeds 2 points"):
        build_answer(spec, columns, 2)
