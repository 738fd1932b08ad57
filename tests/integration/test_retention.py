"""``heatmap migrate`` applies the retention TTLs to tables that already exist,
on the real ClickHouse engine (chDB): old touch rows go, marker rows and
recent rows stay, a second run changes nothing, 0 removes the TTL."""

from __future__ import annotations

import dataclasses
import datetime as dt

from clickhouse_connect.driver.client import Client

from heatmap.clickhouse import connect, migrate
from heatmap.retention import ALL_USERS_TABLES, PER_USER_TABLES, current_days
from heatmap.settings import ClickHouseSettings

TABLES = (*PER_USER_TABLES, *ALL_USERS_TABLES)
NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)


def fill(client: Client, table: str, ages_days: list[int]) -> None:
    """One touch row per age, and one marker row of the oldest month."""
    per_user = table in PER_USER_TABLES
    columns = ["screen_name", "campaign_id", "event_type", "hour", "cell_x", "cell_y", "events"]
    columns += ["source_offset"] + (["user_id"] if per_user else [])
    rows: list[list[object]] = []
    for age in ages_days:
        row: list[object] = ["home", "", 1, NOW - dt.timedelta(days=age), 1, 2, age + 1, 0]
        rows.append(row + (["u1"] if per_user else []))
    oldest = NOW - dt.timedelta(days=max(ages_days))
    marker: list[object] = ["", "topic#0", 0, oldest.replace(day=1, hour=0), 0, 0, 0, 41]
    rows.append(marker + ([""] if per_user else []))
    client.insert(table, rows, column_names=columns)


def surviving(client: Client, table: str) -> tuple[list[int], int]:
    """(events of the touch rows left, sorted; marker rows left)."""
    client.command(f"OPTIMIZE TABLE {table} FINAL")
    touches = client.query(
        f"SELECT events FROM {table} WHERE screen_name != '' ORDER BY events"
    ).result_rows
    markers = client.query(f"SELECT count() FROM {table} WHERE screen_name = ''").result_rows
    return [r[0] for r in touches], int(markers[0][0])


def create_queries(client: Client, database: str) -> dict[str, str]:
    rows = client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String}",
        parameters={"db": database},
    ).result_rows
    return {name: query for name, query in rows if name in TABLES}


def test_migrate_applies_retention_to_existing_tables(
    client: Client, clickhouse: ClickHouseSettings
) -> None:
    # The fixture migrated without retention: these are "existing" tables.
    assert all(current_days(q) == 0 for q in create_queries(client, clickhouse.database).values())
    for table in TABLES:
        fill(client, table, [1, 20, 45, 120])

    kept = dataclasses.replace(clickhouse, retention_per_user_days=30, retention_all_users_days=100)
    assert migrate(kept) == []  # no migration pending: retention is not a migration
    queries = create_queries(client, clickhouse.database)
    assert {t: current_days(q) for t, q in queries.items()} == {
        **dict.fromkeys(PER_USER_TABLES, 30),
        **dict.fromkeys(ALL_USERS_TABLES, 100),
    }
    for table in PER_USER_TABLES:
        assert surviving(client, table) == ([2, 21], 1), table  # 45 and 120 days old went
    for table in ALL_USERS_TABLES:
        assert surviving(client, table) == ([2, 21, 46], 1), table  # only 120 went

    # A second run with the same limits runs no ALTER (MODIFY TTL rewrites parts).
    reader = connect(kept)
    try:
        before = create_queries(reader, kept.database)
        migrate(kept)
        assert create_queries(reader, kept.database) == before
    finally:
        reader.close()

    # 0 keeps rows for ever: the TTL is removed, new old rows stay.
    forever = dataclasses.replace(clickhouse, retention_per_user_days=0, retention_all_users_days=0)
    migrate(forever)
    assert all(current_days(q) == 0 for q in create_queries(client, clickhouse.database).values())
    for table in TABLES:
        fill(client, table, [300])
        touches, _ = surviving(client, table)
        assert 301 in touches, table
