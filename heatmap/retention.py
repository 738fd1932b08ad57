"""Retention: how long touch rows are kept, applied by ``heatmap migrate``.

Per-user rows are personal data and get their own (shorter) limit; the
all-users tables hold only counts per screen, campaign, type, hour and cell.
A row goes when its ``hour`` is older than the limit, at the next merge that
applies TTLs (ClickHouse runs one at least every ``merge_with_ttl_timeout``,
4 hours by default), so a row can outlive its limit by a few hours.

Marker rows (``screen_name = ''``, docs/exactly-once.md) are exempt: they hold
the worker's watermarks, one row per (table, Kafka partition, month) once
merged. Deleting them would let a replayed Kafka record of an old month be
counted a second time.

The ledger of batch ids (``ingest_batches``) keeps its own fixed TTL, the
retry-deduplication window; it is not touched here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

logger = logging.getLogger(__name__)

# Tables holding rows per user, and tables holding counts over all users.
PER_USER_TABLES: tuple[str, ...] = ("touch_cells_by_user",)
ALL_USERS_TABLES: tuple[str, ...] = ("touch_cells", "touch_cells_64")

_TTL_DAYS = re.compile(r"\bTTL hour \+ toIntervalDay\((\d+)\)")


@dataclass(frozen=True)
class Retention:
    """Days a touch row is kept after its hour; 0 keeps it for ever."""

    per_user_days: int
    all_users_days: int

    def days_by_table(self) -> dict[str, int]:
        plan = dict.fromkeys(PER_USER_TABLES, self.per_user_days)
        plan.update(dict.fromkeys(ALL_USERS_TABLES, self.all_users_days))
        return plan


def ttl_statement(table: str, days: int, on_cluster: str = "") -> str:
    """The ALTER that sets (days > 0) or removes (0) a table's row TTL.

    ``table`` is SQL as it goes into the statement (quoted, qualified);
    ``on_cluster`` is empty or an ``ON CLUSTER ...`` clause."""
    target = f"{table} {on_cluster}".rstrip()
    if days == 0:
        return f"ALTER TABLE {target} REMOVE TTL"
    return (
        f"ALTER TABLE {target} MODIFY TTL hour + toIntervalDay({days}) "
        "DELETE WHERE screen_name != ''"
    )


def current_days(create_table_query: str) -> int:
    """The TTL in days a ``SHOW CREATE TABLE`` text carries; 0 without one.

    A TTL this module did not write (another expression) reads as -1, so it
    is replaced rather than mistaken for "already applied".
    """
    match = _TTL_DAYS.search(create_table_query)
    if match:
        return int(match.group(1))
    return -1 if " TTL " in create_table_query else 0


def retention_changes(
    retention: Retention,
    create_queries: Mapping[str, str],
    database_sql: str,
    on_cluster: str = "",
) -> list[str]:
    """The statements that bring the tables to ``retention``; none when current.

    Skipping unchanged tables matters: ``MODIFY TTL`` re-evaluates every
    existing part (a mutation), which on a large table is hours of I/O.
    """
    out = []
    for table, days in retention.days_by_table().items():
        if table in create_queries and current_days(create_queries[table]) != days:
            out.append(ttl_statement(f"{database_sql}.{table}", days, on_cluster))
    return out


def apply_retention(
    client: Client,
    retention: Retention,
    database: str,
    database_sql: str,
    on_cluster: str = "",
) -> list[str]:
    """Set every touch table's TTL to ``retention``; idempotent. Returns what ran.

    On a cluster (``on_cluster`` set) only the local tables carry a TTL; the
    ``Distributed`` tables over them hold no rows."""
    tables = list(retention.days_by_table())
    rows = client.query(
        "SELECT name, create_table_query FROM system.tables "
        "WHERE database = {db:String} AND name IN {tables:Array(String)}",
        parameters={"db": database, "tables": tables},
    ).result_rows
    statements = retention_changes(
        retention, {str(r[0]): str(r[1]) for r in rows}, database_sql, on_cluster
    )
    for statement in statements:
        client.command(statement)
        logger.info("retention: %s", statement)
    return statements
