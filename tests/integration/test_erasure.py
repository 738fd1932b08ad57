"""Exact erasure of one user on the real stack: Kafka broker, in-process worker, chDB.

A known dataset of several users is ingested; one user is erased while more
batches (theirs too) are being ingested; then every cell of every table, and
the all-users projections, must equal the counts computed from the other
users' batches alone, and the erased user's later events must not count. An
un-erase counts them again from then on, and erased data stays erased.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from clickhouse_connect.driver.client import Client

from heatmap.clickhouse import connect
from heatmap.settings import Settings
from heatmap_devtools.fleet import FleetSpec
from query_api import heatmap_query
from query_api.erasure import Erasures, kafka_committed
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.touch_batch import TouchBatch
from stream_workers.app import Worker
from tests.worker_support import (
    assert_exact,
    fleet_batches,
    metric,
    produce_batches,
    shifted,
    start_worker,
    wait_all_committed,
)


@pytest.fixture
def admin(settings: Settings) -> Iterator[Client]:
    """The erasure's own connection (the worker has the test's)."""
    c = connect(settings.clickhouse)
    yield c
    c.close()


def recent_start() -> dt.datetime:
    """26 hours ago: the fleet's day ends before now, well inside every retention limit."""
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(
        hours=26
    )


def previous_month_hours() -> int:
    """A shift that moves every event of the fleet's day into an earlier month."""
    return 24 * (recent_start().day + 2)


def dataset(n: int, first_id: int, users: int = 20) -> list[TouchBatch]:
    """``n`` batches of a small fleet, a fifth of them late events of an earlier month."""
    batches = fleet_batches(n, 200, spec=FleetSpec(users=users, start=recent_start()))
    late = previous_month_hours()
    out = []
    for i, b in enumerate(batches):
        b = shifted(b, 0, f"b-{first_id + i:07d}")
        out.append(shifted(b, late, b.batch_id) if i % 5 == 0 else b)
    return out


def victim_of(batches: Sequence[TouchBatch]) -> str:
    return Counter(b.user_id for b in batches).most_common(1)[0][0]


def assert_projections_exact(client: Client, batches: Sequence[TouchBatch]) -> None:
    """The per-(screen, cell) projections (003) give the reference too."""
    for table, shift in (("touch_cells", 0), ("touch_cells_64", 3)):
        expected: Counter[tuple[str, int, int]] = Counter()
        for b in batches:
            screens = [b.screen_dict[i] for i in b.screen_index]
            cx = (b.x * 512).astype(int).clip(0, 511) >> shift
            cy = (b.y * 512).astype(int).clip(0, 511) >> shift
            for s, x, y in zip(screens, cx, cy, strict=True):
                expected[(s, int(x), int(y))] += 1
        rows = client.query(
            f"SELECT toString(screen_name), cell_x, cell_y, sum(events) FROM {table} "
            "WHERE screen_name IN {screens:Array(String)} GROUP BY screen_name, cell_x, cell_y "
            "HAVING sum(events) > 0",
            parameters={"screens": sorted({s for s, _, _ in expected})},
            settings={"force_optimize_projection": 1},
        ).result_rows
        got = Counter({(str(s), int(x), int(y)): int(n) for s, x, y, n in rows})
        assert got == expected, table


def assert_unique_users_exact(client: Client, batches: Sequence[TouchBatch]) -> None:
    """Distinct users per 64-grid cell of each screen, and in total, as the query counts them."""
    expected: dict[str, dict[int, set[str]]] = {}
    for b in batches:
        screens = [b.screen_dict[i] for i in b.screen_index]
        cx = (b.x * 512).astype(int).clip(0, 511) >> 3
        cy = (b.y * 512).astype(int).clip(0, 511) >> 3
        for s, x, y in zip(screens, cx, cy, strict=True):
            expected.setdefault(s, {}).setdefault(int(y) * 64 + int(x), set()).add(b.user_id)
    for screen, cells in expected.items():
        spec = heatmap_query.parse_request(
            pb.QueryHeatmapDataRequest(screen_name=screen, grid_size=64)
        )
        plan = heatmap_query.plan_unique_users(spec)
        rows = client.query(plan.sql, parameters=plan.parameters).result_rows
        got = {int(k): int(u) for k, u in rows}
        total = got.pop(heatmap_query.TOTAL_USERS_KEY)
        assert got == {k: len(u) for k, u in cells.items()}, screen
        assert total == len(set().union(*cells.values())), screen


async def test_erasure_is_exact_while_ingesting_and_later_events_are_not_counted(
    settings: Settings, client: Client, admin: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    first = dataset(60, 0)
    during = dataset(30, 1000)
    victim = victim_of(first)
    others = [b for b in first + during if b.user_id != victim]
    assert len({b.user_id for b in others}) >= 4
    assert any(b.user_id == victim for b in during)
    produce_batches(k.bootstrap, k.topic, first)
    _, registry = await start_worker(settings, client, started)
    await wait_all_committed(settings)
    assert_exact(client, first)

    erasures = Erasures(admin, k.topic, kafka_committed(k), wait_timeout_s=60)
    # Erase while the second wave (the victim's batches among them) is ingested.
    erase = asyncio.create_task(asyncio.to_thread(erasures.erase, victim, "test-admin"))
    await asyncio.to_thread(produce_batches, k.bootstrap, k.topic, during)
    report = await erase
    assert report.outcome == "done"
    victim_first = sum(len(b) for b in first if b.user_id == victim)
    victim_all = victim_first + sum(len(b) for b in during if b.user_id == victim)
    assert victim_first <= report.events <= victim_all

    # Sent after the erasure: never counted.
    after = [b for b in dataset(30, 2000) if b.user_id == victim]
    assert after
    produce_batches(k.bootstrap, k.topic, after)
    await wait_all_committed(settings)
    assert_exact(client, others)
    assert_projections_exact(client, others)
    assert_unique_users_exact(client, others)
    per_user = client.query(
        "SELECT count() FROM touch_cells_by_user WHERE user_id = {u:String}",
        parameters={"u": victim},
    ).result_rows[0][0]
    assert per_user == 0
    suppressed = metric(registry, "heatmap_worker_suppressed_events_total")
    assert suppressed >= victim_all - report.events + sum(len(b) for b in after)

    # Idempotent: a second run changes nothing and writes no second audit line.
    again = erasures.erase(victim, "test-admin")
    assert (again.outcome, again.erasure_id) == ("already done", report.erasure_id)
    assert_exact(client, others)
    audit = client.query(
        "SELECT user_id, action, requested_by, events FROM erasure_audit"
    ).result_rows
    assert audit == [(victim, "erase", "test-admin", report.events)]

    # Un-erase: new events count again; what was erased stays erased.
    undo = erasures.unerase(victim, "test-admin")
    assert undo.outcome == "done"
    later = [b for b in dataset(30, 3000) if b.user_id == victim]
    produce_batches(k.bootstrap, k.topic, later)
    await wait_all_committed(settings)
    assert_exact(client, others + later)
    actions = client.query("SELECT action FROM erasure_audit ORDER BY done_at, action")
    assert sorted(r[0] for r in actions.result_rows) == ["erase", "unerase"]


async def test_dry_run_changes_nothing(
    settings: Settings, client: Client, admin: Client, started: list[Worker]
) -> None:
    k = settings.kafka
    assert k.bootstrap
    batches = dataset(20, 0)
    victim = victim_of(batches)
    produce_batches(k.bootstrap, k.topic, batches)
    await start_worker(settings, client, started)
    await wait_all_committed(settings)
    report = Erasures(admin, k.topic, kafka_committed(k)).erase(victim, "t", dry_run=True)
    assert report.outcome == "would erase"
    assert report.events == sum(len(b) for b in batches if b.user_id == victim)
    assert_exact(client, batches)
    assert client.query("SELECT count() FROM user_suppressions").result_rows[0][0] == 0
