"""Retention statements: which ALTERs ``heatmap migrate`` runs for which TTLs."""

from __future__ import annotations

from heatmap.retention import (
    ALL_USERS_TABLES,
    PER_USER_TABLES,
    Retention,
    current_days,
    retention_changes,
    ttl_statement,
)

# As ClickHouse prints them in system.tables.create_table_query.
WITHOUT = (
    "CREATE TABLE hm.touch_cells (`hour` DateTime('UTC')) ENGINE = AggregatingMergeTree "
    "ORDER BY hour SETTINGS index_granularity = 8192"
)
WITH_90 = (
    "CREATE TABLE hm.touch_cells (`hour` DateTime('UTC')) ENGINE = AggregatingMergeTree "
    "ORDER BY hour TTL hour + toIntervalDay(90) WHERE screen_name != '' "
    "SETTINGS index_granularity = 8192"
)
FOREIGN = WITHOUT.replace("ORDER BY hour", "ORDER BY hour TTL hour + toIntervalMonth(1)")


def test_statement_keeps_marker_rows_and_removes_with_zero() -> None:
    assert ttl_statement("`hm`.t", 90) == (
        "ALTER TABLE `hm`.t MODIFY TTL hour + toIntervalDay(90) DELETE WHERE screen_name != ''"
    )
    assert (
        ttl_statement("`hm`.t", 0, "ON CLUSTER `c`")
        == "ALTER TABLE `hm`.t ON CLUSTER `c` REMOVE TTL"
    )


def test_current_days_reads_what_clickhouse_prints() -> None:
    assert current_days(WITHOUT) == 0
    assert current_days(WITH_90) == 90
    assert current_days(FOREIGN) == -1  # someone else's TTL: replaced, not kept


def test_per_user_and_all_users_tables_get_their_own_limit() -> None:
    plan = Retention(per_user_days=30, all_users_days=400).days_by_table()
    assert {t: plan[t] for t in PER_USER_TABLES} == dict.fromkeys(PER_USER_TABLES, 30)
    assert {t: plan[t] for t in ALL_USERS_TABLES} == dict.fromkeys(ALL_USERS_TABLES, 400)


def test_only_tables_whose_ttl_differs_are_altered() -> None:
    tables = {t: WITHOUT for t in (*PER_USER_TABLES, *ALL_USERS_TABLES)}
    tables["touch_cells"] = WITH_90
    changes = retention_changes(Retention(90, 90), tables, "`hm`")
    assert len(changes) == len(tables) - 1
    assert not any("`hm`.touch_cells " in c for c in changes)
    assert retention_changes(Retention(0, 0), {"touch_cells": WITHOUT}, "`hm`") == []
    assert retention_changes(Retention(0, 0), {"touch_cells": WITH_90}, "`hm`") == [
        "ALTER TABLE `hm`.touch_cells REMOVE TTL"
    ]
    assert retention_changes(Retention(0, 7), {"touch_cells": FOREIGN}, "`hm`") == [
        ttl_statement("`hm`.touch_cells", 7)
    ]


def test_absent_tables_are_left_alone() -> None:
    assert retention_changes(Retention(1, 1), {}, "`hm`") == []
