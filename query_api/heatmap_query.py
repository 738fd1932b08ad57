"""QueryHeatmapData: request -> validated spec -> parameterised SQL -> response.

Table per query (schemas/clickhouse/001_touch_cells.sql), the smallest that
answers exactly:

* PER_USER mode, or a ``user_id`` filter  -> ``touch_cells_by_user`` (512 grid)
* ALL_USERS, grid 8..64                  -> ``touch_cells_64`` (64 grid)
* ALL_USERS, grid 128..512               -> ``touch_cells`` (512 grid)

A cell at grid g is ``intDiv(stored cell, stored grid / g)``: an exact roll-up
because every g divides the stored grid. Counts are always ``sum(events)``
with ``GROUP BY`` (never FINAL). The screen filter excludes marker rows
(screen_name = '').

Time filter: an event counts when the start of its UTC hour (the ``hour``
column) lies in [start_time, end_time). ``hour`` is whole seconds, so with
s = ceil(start_time) and e = ceil(end_time) in Unix seconds the condition is
exactly ``hour >= s AND hour < e``.

Every value from the request reaches ClickHouse as a bound parameter
(``{name:Type}``); the SQL text is chosen from fixed fragments only.

PER_USER answers are bounded by ``Settings.query.max_per_user_points``
(``HEATMAP_MAX_PER_USER_POINTS``, default 200,000 points): a query whose
answer would be larger fails with RESOURCE_EXHAUSTED and a message saying how
to narrow it, rather than returning a silently truncated heatmap. A
request with ``top_users = N`` first ranks the users (``plan_top_users``:
their number and touches before the cut, then the N highest) and then reads
only those users' cells, so a popular screen can still be shown per user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2

from heatmap.errors import FieldViolation, InvalidArgument, ResourceExhausted
from query_api.point_encoding import TOTAL_USERS_KEY as TOTAL_USERS_KEY
from query_api.point_encoding import (
    EncodedReply,
    dense,
    dense_users,
    encode_all_users,
    encode_per_user,
)
from schemas.event_rules import EVENT_TYPE_NAMES, EVENT_TYPES, MAX_CAMPAIGN_ID, MAX_USER_ID
from schemas.event_rules import MAX_SCREEN_NAME as MAX_SCREEN_NAME
from schemas.heatmap.v1 import heatmap_pb2

GRID_SIZES = (8, 16, 32, 64, 128, 256, 512)
DEFAULT_GRID = 64
VALID_EVENT_TYPES = frozenset(EVENT_TYPES)
_DATETIME_MAX = 2**32 - 1  # ClickHouse DateTime upper bound (2106-02-07)
MAX_TOP_USERS = 1000


@dataclass(frozen=True)
class QuerySpec:
    """A validated QueryHeatmapDataRequest."""

    screen_name: str
    campaign_id: str
    per_user: bool
    user_id: str
    event_types: tuple[int, ...]
    start_s: int | None  # ceil(start_time) in Unix seconds; None: unbounded
    end_s: int | None  # ceil(end_time) in Unix seconds; None: unbounded
    grid_size: int
    top_users: int = 0  # PER_USER only; 0: every user
    unique_users: bool = False  # ALL_USERS only: distinct users per cell asked for

    @property
    def empty_range(self) -> bool:
        return self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s


@dataclass(frozen=True)
class UserRanking:
    """The users a top_users query keeps, and what the filters matched before the cut."""

    user_ids: tuple[str, ...]
    total_users: int
    total_touches: int


@dataclass(frozen=True)
class Plan:
    """The SQL for a spec: fixed text, bound parameters, and what it reads."""

    table: str
    sql: str
    parameters: dict[str, Any]
    per_user: bool


def _ceil_seconds(ts: timestamp_pb2.Timestamp) -> int:
    return int(ts.seconds) + (1 if ts.nanos > 0 else 0)


def parse_request(request: heatmap_pb2.QueryHeatmapDataRequest, field: str = "") -> QuerySpec:
    """Validate ``request``; InvalidArgument names every offending field."""
    prefix = f"{field}." if field else ""
    violations: list[FieldViolation] = []
    if not request.screen_name:
        violations.append(FieldViolation(prefix + "screen_name", "is required"))
    elif len(request.screen_name) > MAX_SCREEN_NAME:
        violations.append(
            FieldViolation(prefix + "screen_name", f"longer than {MAX_SCREEN_NAME} characters")
        )
    # Longer values cannot match a stored row: the ingest rules bound them.
    for text_field, limit in (("campaign_id", MAX_CAMPAIGN_ID), ("user_id", MAX_USER_ID)):
        if len(getattr(request, text_field)) > limit:
            violations.append(
                FieldViolation(prefix + text_field, f"longer than {limit} characters")
            )
    grid = request.grid_size or DEFAULT_GRID
    if grid not in GRID_SIZES:
        violations.append(
            FieldViolation(
                prefix + "grid_size",
                f"is {request.grid_size}; must be 0 (= 64) or a power of two from 8 to 512",
            )
        )
    if request.mode not in (
        heatmap_pb2.HEATMAP_MODE_UNSPECIFIED,
        heatmap_pb2.ALL_USERS,
        heatmap_pb2.PER_USER,
    ):
        violations.append(FieldViolation(prefix + "mode", f"unknown mode {request.mode}"))
    for i, event_type in enumerate(request.event_types):
        if event_type not in VALID_EVENT_TYPES:
            violations.append(
                FieldViolation(
                    f"{prefix}event_types[{i}]",
                    f"is {event_type}; must be one of {EVENT_TYPE_NAMES}",
                )
            )
    start_s, end_s = time_bounds(request, prefix, violations)
    per_user = request.mode == heatmap_pb2.PER_USER
    if not 0 <= request.top_users <= MAX_TOP_USERS:
        violations.append(
            FieldViolation(
                prefix + "top_users", f"is {request.top_users}; must be 0 or 1..{MAX_TOP_USERS}"
            )
        )
    elif request.top_users and not per_user:
        violations.append(FieldViolation(prefix + "top_users", "is only for mode PER_USER"))
    if request.unique_users and per_user:
        violations.append(FieldViolation(prefix + "unique_users", "is only for mode ALL_USERS"))
    if violations:
        raise InvalidArgument(violations)
    return QuerySpec(
        screen_name=request.screen_name,
        campaign_id=request.campaign_id,
        per_user=per_user,
        user_id=request.user_id,
        event_types=tuple(sorted(set(request.event_types))),
        start_s=start_s,
        end_s=end_s,
        grid_size=grid,
        unique_users=request.unique_users,
        top_users=request.top_users,
    )


def time_bounds(
    request: heatmap_pb2.QueryHeatmapDataRequest | heatmap_pb2.ListScreensRequest,
    prefix: str,
    violations: list[FieldViolation],
) -> tuple[int | None, int | None]:
    """(start_s, end_s) of a request's start_time/end_time, clamped to DateTime.

    Appends to ``violations`` rather than raising, so one answer names every
    bad field.
    """
    for name in ("start_time", "end_time"):
        ts = getattr(request, name)
        if request.HasField(name) and not 0 <= ts.nanos < 1_000_000_000:
            violations.append(FieldViolation(prefix + name, "nanos out of range"))
    start_s = _ceil_seconds(request.start_time) if request.HasField("start_time") else None
    end_s = _ceil_seconds(request.end_time) if request.HasField("end_time") else None
    if start_s is not None and end_s is not None and end_s < start_s:
        violations.append(FieldViolation(prefix + "end_time", "is before start_time"))
    # Clamp to the DateTime range: bounds outside it filter nothing or everything.
    if start_s is not None and start_s <= 0:
        start_s = None
    if end_s is not None and end_s > _DATETIME_MAX:
        end_s = None
    return start_s, end_s


def time_where(
    start_s: int | None, end_s: int | None, where: list[str], params: dict[str, Any]
) -> None:
    """The hour-range conditions (bound parameters ``start``/``end``)."""
    if start_s is not None:
        where.append("hour >= toDateTime({start:UInt32}, 'UTC')")
        params["start"] = min(start_s, _DATETIME_MAX)
    if end_s is not None:
        where.append("hour < toDateTime({end:UInt32}, 'UTC')")
        params["end"] = max(end_s, 0)


def _filters(spec: QuerySpec) -> tuple[list[str], dict[str, Any]]:
    where = ["screen_name = {screen:String}"]
    params: dict[str, Any] = {"screen": spec.screen_name}
    if spec.campaign_id:
        where.append("campaign_id = {campaign:String}")
        params["campaign"] = spec.campaign_id
    if spec.user_id:
        where.append("user_id = {user:String}")
        params["user"] = spec.user_id
    if spec.event_types:
        where.append("event_type IN {types:Array(UInt8)}")
        params["types"] = list(spec.event_types)
    time_where(spec.start_s, spec.end_s, where, params)
    return where, params


def plan_top_users(spec: QuerySpec) -> Plan:
    """Rank users for a top_users query: rows (user_id, touches, users, all touches).

    The window totals are computed over every user before ORDER BY/LIMIT, so
    the one statement also tells how many users and touches the cut left out.
    """
    where, params = _filters(spec)
    params["top"] = spec.top_users
    sql = (
        "SELECT user_id, t, count() OVER () AS users, sum(t) OVER () AS touches FROM "
        f"(SELECT user_id, sum(events) AS t FROM touch_cells_by_user WHERE {' AND '.join(where)} "
        "GROUP BY user_id HAVING t > 0) ORDER BY t DESC, user_id ASC LIMIT {top:UInt32}"
    )
    return Plan(table="touch_cells_by_user", sql=sql, parameters=params, per_user=True)


def ranking_from_rows(columns: Sequence[Sequence[Any]]) -> UserRanking:
    if not columns or not columns[0]:
        return UserRanking((), 0, 0)
    users, _, n_users, touches = columns
    return UserRanking(tuple(users), int(n_users[0]), int(touches[0]))


def plan(spec: QuerySpec, max_per_user_points: int, users: Sequence[str] | None = None) -> Plan:
    """The one SQL statement answering ``spec``; user input only as bound parameters.

    ``users``: PER_USER only, read just these users (the top_users ranking).
    """
    if spec.per_user or spec.user_id:
        table, stored_grid = "touch_cells_by_user", 512
    elif spec.grid_size <= 64:
        table, stored_grid = "touch_cells_64", 64
    else:
        table, stored_grid = "touch_cells", 512
    where, params = _filters(spec)
    params["div"] = stored_grid // spec.grid_size
    if users is not None:
        where.append("user_id IN {users:Array(String)}")
        params["users"] = list(users)
    if spec.per_user:
        cells = "intDiv(cell_x, {div:UInt16}) AS gx, intDiv(cell_y, {div:UInt16}) AS gy"
        select = f"SELECT user_id, {cells}, sum(events) AS n FROM {table}"
        group = "GROUP BY user_id, gx, gy HAVING n > 0 LIMIT {limit:UInt64}"
        params["limit"] = max_per_user_points + 1
    else:
        # One integer key per cell (row-major) groups faster than two columns,
        # and a UInt16 key (grid <= 256) lets ClickHouse aggregate into a flat
        # array instead of a hash table.
        key_type = "UInt16" if spec.grid_size <= 256 else "UInt32"
        key = (
            f"to{key_type}(intDiv(cell_y, {{div:UInt16}}) * {{grid:UInt32}}"
            " + intDiv(cell_x, {div:UInt16})) AS k"
        )
        params["grid"] = spec.grid_size
        select = f"SELECT {key}, sum(events) AS n FROM {table}"
        group = "GROUP BY k HAVING n > 0"
    sql = f"{select} WHERE {' AND '.join(where)} {group}"
    return Plan(table=table, sql=sql, parameters=params, per_user=spec.per_user)


def plan_unique_users(spec: QuerySpec) -> Plan:
    """ALL_USERS: distinct users per cell (key as in ``plan``) and in total (key -1).

    Exact (``uniqExact`` of the user ids) from the per-user table, whose
    erasure DELETE removes a user everywhere. Costs time in proportion to the
    screen's per-user rows under the filters: asked for, not always run.
    """
    where, params = _filters(spec)
    g = spec.grid_size
    if g <= 64:
        gx = f"intDiv(intDiv(cell_x, 8), {64 // g})"
        gy = f"intDiv(intDiv(cell_y, 8), {64 // g})"
    else:
        gx, gy = f"intDiv(cell_x, {512 // g})", f"intDiv(cell_y, {512 // g})"
    condition = " AND ".join(where)
    # The total reads the table, never the projection: merging its thousands of
    # per-cell states into one set took 44 s where reading the rows took 0.5 s
    # (10 M events, 100 k users on one screen). A condition on ``hour``, which
    # the projection does not keep, rules it out; every hour is >= 0.
    whole = condition if "hour" in condition else f"{condition} AND hour >= toDateTime(0, 'UTC')"
    sql = (
        f"SELECT toInt64({gy} * {g} + {gx}) AS k, uniqExact(user_id) AS u "
        f"FROM touch_cells_by_user WHERE {condition} GROUP BY k "
        f"UNION ALL SELECT toInt64({TOTAL_USERS_KEY}), uniqExact(user_id) "
        f"FROM touch_cells_by_user WHERE {whole}"
    )
    return Plan(table="touch_cells_by_user", sql=sql, parameters=params, per_user=False)


def build_answer(
    spec: QuerySpec,
    columns: Sequence[Sequence[Any]],
    max_per_user_points: int,
    ranking: UserRanking | None = None,
    unique_users: Sequence[Sequence[Any]] | None = None,
    min_users: int = 0,
) -> EncodedReply:
    """The answer for the rows of ``plan(spec)`` (given column-wise: lists or numpy).

    ``ranking``: the top_users ranking the rows were read for (its totals go
    into total_users/total_touches). Both modes' answers are written as bytes
    (``point_encoding``); ``users`` of PER_USER rows: a str sequence or a pyarrow
    string column.
    """
    g = spec.grid_size
    if not spec.per_user:
        keys, counts = columns if columns else ((), ())
        per_cell, total_users = (None, 0) if unique_users is None else dense_users(g, unique_users)
        return encode_all_users(g, dense(g, keys, counts), per_cell, total_users, min_users)
    totals = None if ranking is None else (ranking.total_users, ranking.total_touches)
    if not columns or not len(columns[0]):
        return encode_per_user(g, [], [], [], [], totals)
    users, gxs, gys, counts = columns
    if len(counts) > max_per_user_points:
        raise ResourceExhausted(
            f"PER_USER answer exceeds {max_per_user_points} points (user, cell); narrow it "
            "with user_id, campaign_id, event_types, a time range or a smaller grid_size"
        )
    return encode_per_user(g, users, gxs, gys, counts, totals)


def build_response(
    spec: QuerySpec,
    columns: Sequence[Sequence[Any]],
    max_per_user_points: int,
    ranking: UserRanking | None = None,
    unique_users: Sequence[Sequence[Any]] | None = None,
    min_users: int = 0,
) -> heatmap_pb2.QueryHeatmapDataResponse:
    """``build_answer`` as a message."""
    return build_answer(
        spec, columns, max_per_user_points, ranking, unique_users, min_users
    ).message()


def is_empty(spec: QuerySpec) -> bool:
    """True when no row can match (empty or out-of-range time window): skip the query."""
    if spec.empty_range:
        return True
    if spec.start_s is not None and spec.start_s > _DATETIME_MAX:
        return True
    return spec.end_s is not None and spec.end_s <= 0
