"""ListScreens: request -> validated spec -> parameterised SQL -> screens with counts.

Counts come from ``touch_cells_64``, the smallest table holding every event
(all users, every campaign and type), summed per screen with the same
UTC-hour time filter as QueryHeatmapData (``heatmap_query.time_bounds``).
Marker rows (screen_name = '') are left out. The name filter is a
case-insensitive substring match, ``positionCaseInsensitiveUTF8``, so no
character of the caller's text is a pattern (LIKE would make ``%`` and
``_`` wildcards). Every value reaches ClickHouse as a bound parameter.

Whether a screen has a screenshot is the object store's to say (it holds the
screenshots and their metadata); ``query_api.app`` asks it per listed screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heatmap.errors import FieldViolation, InvalidArgument
from query_api.heatmap_query import MAX_SCREEN_NAME, Plan, time_bounds, time_where
from schemas.event_rules import MAX_CAMPAIGN_ID
from schemas.heatmap.v1 import heatmap_pb2

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000


@dataclass(frozen=True)
class ScreensSpec:
    campaign_id: str
    name_contains: str
    start_s: int | None
    end_s: int | None
    limit: int

    @property
    def empty_range(self) -> bool:
        return self.start_s is not None and self.end_s is not None and self.start_s >= self.end_s


def parse_request(request: heatmap_pb2.ListScreensRequest) -> ScreensSpec:
    """Validate ``request``; InvalidArgument names every offending field."""
    violations: list[FieldViolation] = []
    if len(request.campaign_id) > MAX_CAMPAIGN_ID:
        violations.append(
            FieldViolation("campaign_id", f"longer than {MAX_CAMPAIGN_ID} characters")
        )
    if len(request.name_contains) > MAX_SCREEN_NAME:
        violations.append(
            FieldViolation("name_contains", f"longer than {MAX_SCREEN_NAME} characters")
        )
    if not 0 <= request.limit <= MAX_LIMIT:
        violations.append(
            FieldViolation(
                "limit", f"is {request.limit}; must be 0 (= {DEFAULT_LIMIT}) or 1..{MAX_LIMIT}"
            )
        )
    start_s, end_s = time_bounds(request, "", violations)
    if violations:
        raise InvalidArgument(violations)
    return ScreensSpec(
        campaign_id=request.campaign_id,
        name_contains=request.name_contains,
        start_s=start_s,
        end_s=end_s,
        limit=request.limit or DEFAULT_LIMIT,
    )


def plan(spec: ScreensSpec) -> Plan:
    """Screens with their event counts, most first; one row past the limit tells truncation."""
    where = ["screen_name != ''"]
    params: dict[str, Any] = {"limit": spec.limit + 1}
    if spec.campaign_id:
        where.append("campaign_id = {campaign:String}")
        params["campaign"] = spec.campaign_id
    if spec.name_contains:
        where.append("positionCaseInsensitiveUTF8(screen_name, {q:String}) > 0")
        params["q"] = spec.name_contains
    time_where(spec.start_s, spec.end_s, where, params)
    sql = (
        "SELECT toString(screen_name) AS s, sum(events) AS n FROM touch_cells_64 "
        f"WHERE {' AND '.join(where)} GROUP BY s HAVING n > 0 "
        "ORDER BY n DESC, s ASC LIMIT {limit:UInt32}"
    )
    return Plan(table="touch_cells_64", sql=sql, parameters=params, per_user=False)


def counts_from_rows(
    spec: ScreensSpec, columns: Sequence[Sequence[Any]]
) -> tuple[list[tuple[str, int]], bool]:
    """((screen, events) most first, at most ``spec.limit``; whether more matched)."""
    if not columns or not columns[0]:
        return [], False
    names, counts = columns
    rows = [(str(name), int(n)) for name, n in zip(names, counts, strict=True)]
    return rows[: spec.limit], len(rows) > spec.limit
