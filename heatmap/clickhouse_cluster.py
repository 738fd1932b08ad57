"""``heatmap migrate --cluster NAME``: the same DDL files, applied to a ClickHouse cluster.

The versioned files in ``schemas/clickhouse`` are written for one server and
stay that way. For a cluster this module derives, statement by statement:

* ``CREATE DATABASE ... ON CLUSTER``;
* each ``CREATE TABLE t`` becomes ``CREATE TABLE <db>.t ON CLUSTER c`` with
  its engine ``XMergeTree(args)`` replaced by
  ``ReplicatedXMergeTree('/clickhouse/tables/{shard}/{database}/{table}',
  '{replica}', args)`` (``{shard}`` and ``{replica}`` are server macros,
  ``{database}`` and ``{table}`` are filled in by ClickHouse itself);
* beside it a ``Distributed`` table ``t_all`` (see ``distributed_name``) over
  the cluster, the table to READ through;
* ``ALTER TABLE`` / ``DROP TABLE`` get ``ON CLUSTER`` (column changes other than
  codec-only ones, and drops, are mirrored on ``t_all``); any other statement is refused, so a new
  kind of migration has to teach this module how to run it on a cluster.

Where writes go (docs/operations.md, "ClickHouse on a cluster"): the worker's
exactly-once design needs each flush (rows + marker) to land as ONE insert in
ONE shard's local replicated table, and its high-water-mark read to see that
shard's latest state. So nothing inserts through a ``Distributed`` table: the
workers write the local ``ReplicatedAggregatingMergeTree`` (the recommended
cluster is one shard with several replicas), readers use ``t_all``. The
``Distributed`` tables are declared WITHOUT a sharding key on purpose: with
more than one shard ClickHouse then refuses inserts through them, instead of
splitting a flush across shards.

The transformation is pure (``cluster_migration_statements``) and unit
tested; ``python -m heatmap.clickhouse_cluster CLUSTER [DATABASE]`` prints the
SQL for review before an SRE runs it.
"""

from __future__ import annotations

import itertools
import re
import sys
from collections.abc import Sequence

from heatmap.clickhouse import (
    Migration,
    apply_pending,
    connect,
    load_migrations,
    quote_identifier,
    retention,
)
from heatmap.retention import apply_retention
from heatmap.settings import ClickHouseSettings

#: ZooKeeper/Keeper path of each replicated table (per shard).
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
#: The ledger is one replicated table across the WHOLE cluster (no {shard}):
#: every node sees which migrations ran, whatever its shard.
LEDGER_REPLICA_PATH = "/clickhouse/tables/all/{database}/schema_migrations"
REPLICA_NAME = "{replica}"
DISTRIBUTED_SUFFIX = "_all"

_MERGE_TREE_ENGINES = frozenset(
    {
        "MergeTree",
        "AggregatingMergeTree",
        "ReplacingMergeTree",
        "SummingMergeTree",
        "CollapsingMergeTree",
        "VersionedCollapsingMergeTree",
        "GraphiteMergeTree",
        "CoalescingMergeTree",
    }
)
_NAME = r"(?:`(?:[^`\\]|\\.)+`|[A-Za-z_][A-Za-z0-9_]*)"
_CREATE_TABLE = re.compile(
    rf"^\s*CREATE\s+TABLE\s+(?P<ine>IF\s+NOT\s+EXISTS\s+)?(?P<name>{_NAME})\s*(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)
_ALTER_TABLE = re.compile(
    rf"^\s*ALTER\s+TABLE\s+(?P<name>{_NAME})\s+(?P<rest>.+)$", re.IGNORECASE | re.DOTALL
)
_DROP_TABLE = re.compile(
    rf"^\s*DROP\s+TABLE\s+(?P<ie>IF\s+EXISTS\s+)?(?P<name>{_NAME})\s*$", re.IGNORECASE
)
_COLUMN_COMMAND = re.compile(
    r"^\s*(ADD|DROP|MODIFY|RENAME|COMMENT)\s+COLUMN\b", re.IGNORECASE | re.DOTALL
)
# MODIFY COLUMN c CODEC(...) without a type: a change of the stored parts only.
_CODEC_ONLY = re.compile(
    r"^\s*MODIFY\s+COLUMN\s+(IF\s+EXISTS\s+)?\S+\s+CODEC\s*\(", re.IGNORECASE | re.DOTALL
)
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ClusterDDLError(ValueError):
    """A migration statement this module cannot turn into cluster DDL."""


# ------------------------------------------------------------- pure SQL


def distributed_name(table: str) -> str:
    """Name of the Distributed (read) table over ``table``: ``<table>_all``."""
    return table + DISTRIBUTED_SUFFIX


def database_statement(cluster: str, database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)} {_on(cluster)}"


def ledger_statement(cluster: str, database: str) -> str:
    """``schema_migrations``, replicated on every node of the cluster."""
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_identifier(database)}.schema_migrations "
        f"{_on(cluster)}\n"
        "(\n"
        "    version    UInt32   COMMENT 'Migration number (file prefix)',\n"
        "    name       String   COMMENT 'Migration file name without prefix and .sql',\n"
        "    checksum   String   COMMENT 'sha256 prefix of the file applied',\n"
        "    applied_at DateTime('UTC') DEFAULT now() COMMENT 'When heatmap migrate applied it'\n"
        ")\n"
        f"ENGINE = ReplicatedMergeTree({_literal(LEDGER_REPLICA_PATH)}, "
        f"{_literal(REPLICA_NAME)}) ORDER BY version\n"
        "COMMENT 'Schema migrations applied by heatmap migrate --cluster'"
    )


def cluster_statements(statement: str, cluster: str, database: str) -> list[str]:
    """The cluster form of one single-server DDL statement (one or more statements)."""
    _check_cluster(cluster)
    if match := _CREATE_TABLE.match(statement):
        return _create_table(match, cluster, database)
    if match := _ALTER_TABLE.match(statement):
        return _alter_table(match, cluster, database)
    if match := _DROP_TABLE.match(statement):
        name = _unquote(match.group("name"))
        return [
            f"DROP TABLE IF EXISTS {_qualified(database, distributed_name(name))} "
            f"{_on(cluster)} SYNC",
            f"DROP TABLE {match.group('ie') or ''}{_qualified(database, name)} {_on(cluster)} SYNC",
        ]
    first = " ".join(statement.split()[:3])
    raise ClusterDDLError(
        f"no cluster form for statement starting {first!r}: "
        "teach heatmap/clickhouse_cluster.py how to run it ON CLUSTER"
    )


def cluster_migration_statements(migration: Migration, cluster: str, database: str) -> list[str]:
    """Every statement of ``migration`` in its cluster form, in order."""
    out: list[str] = []
    for statement in migration.statements:
        out.extend(cluster_statements(statement, cluster, database))
    return out


def render_cluster_sql(cluster: str, database: str) -> str:
    """The whole cluster schema as one SQL script (for review; ``migrate_cluster`` runs it)."""
    out = [database_statement(cluster, database) + ";", ledger_statement(cluster, database) + ";"]
    for migration in load_migrations():
        out.append(f"-- {migration.version:03d}_{migration.name}")
        out.extend(s + ";" for s in cluster_migration_statements(migration, cluster, database))
    return "\n\n".join(out) + "\n"


def _create_table(match: re.Match[str], cluster: str, database: str) -> list[str]:
    name = _unquote(match.group("name"))
    rest = match.group("rest")
    engine_at = _find_top_level_keyword(rest, "ENGINE")
    if engine_at < 0:
        raise ClusterDDLError(f"CREATE TABLE {name}: no ENGINE clause")
    engine_match = re.compile(r"ENGINE\s*=\s*(?P<engine>[A-Za-z]+)\s*", re.IGNORECASE).match(
        rest, engine_at
    )
    if engine_match is None:
        raise ClusterDDLError(f"CREATE TABLE {name}: cannot read the ENGINE clause")
    engine = engine_match.group("engine")
    if engine not in _MERGE_TREE_ENGINES:
        raise ClusterDDLError(
            f"CREATE TABLE {name}: engine {engine} has no Replicated form here "
            f"(expected one of {sorted(_MERGE_TREE_ENGINES)})"
        )
    after = engine_match.end()
    args: list[str] = []
    if after < len(rest) and rest[after] == "(":
        close = _matching_paren(rest, after)
        inner = rest[after + 1 : close].strip()
        if inner:
            args.append(inner)
        after = close + 1
    replicated = (
        f"ENGINE = Replicated{engine}("
        + ", ".join([_literal(REPLICA_PATH), _literal(REPLICA_NAME), *args])
        + ")"
    )
    local = (
        f"CREATE TABLE {match.group('ine') or ''}{_qualified(database, name)} {_on(cluster)}\n"
        f"{rest[:engine_at].strip()}\n{replicated}\n{rest[after:].strip()}"
    )
    distributed = (
        f"CREATE TABLE {match.group('ine') or ''}"
        f"{_qualified(database, distributed_name(name))} {_on(cluster)}\n"
        f"AS {_qualified(database, name)}\n"
        f"ENGINE = Distributed({_literal(cluster)}, {_literal(database)}, {_literal(name)})\n"
        f"COMMENT {_literal(f'Read {name} across the cluster (read only: never insert here)')}"
    )
    return [local, distributed]


def _alter_table(match: re.Match[str], cluster: str, database: str) -> list[str]:
    name = _unquote(match.group("name"))
    rest = match.group("rest").strip()
    out = [f"ALTER TABLE {_qualified(database, name)} {_on(cluster)} {rest}"]
    commands = _split_top_level(rest, ",")
    if all(_COLUMN_COMMAND.match(c) for c in commands):
        # Column changes are mirrored on the Distributed table (it has the same columns);
        # a codec-only change is not: codecs belong to stored parts, and it stores none.
        mirrored = [c.strip() for c in commands if not _CODEC_ONLY.match(c)]
        if mirrored:
            out.append(
                f"ALTER TABLE {_qualified(database, distributed_name(name))} {_on(cluster)} "
                + ", ".join(mirrored)
            )
    return out


# ---------------------------------------------------------------- scanning


def _scan(sql: str) -> list[tuple[int, str, int]]:
    """(index, char, paren depth) of every character outside quotes."""
    out: list[tuple[int, str, int]] = []
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                if i + 1 < len(sql) and sql[i + 1] == quote:  # doubled quote
                    i += 2
                    continue
                quote = None
            i += 1
            continue
        if ch in "'`\"":
            quote = ch
        elif ch == "(":
            out.append((i, ch, depth))
            depth += 1
        elif ch == ")":
            depth -= 1
            out.append((i, ch, depth))
        else:
            out.append((i, ch, depth))
        i += 1
    return out


def _find_top_level_keyword(sql: str, keyword: str) -> int:
    """Index of ``keyword`` as a word at paren depth 0 outside quotes, else -1."""
    top = {i for i, _, depth in _scan(sql) if depth == 0}
    for m in re.finditer(rf"\b{keyword}\b", sql, re.IGNORECASE):
        if m.start() in top:
            return m.start()
    return -1


def _matching_paren(sql: str, open_at: int) -> int:
    depth_at_open = next(d for i, ch, d in _scan(sql) if i == open_at and ch == "(")
    for i, ch, depth in _scan(sql):
        if i > open_at and ch == ")" and depth == depth_at_open:
            return i
    raise ClusterDDLError(f"unbalanced parentheses in: {sql[:80]!r}")


def _split_top_level(sql: str, sep: str) -> list[str]:
    cuts = [i for i, ch, depth in _scan(sql) if ch == sep and depth == 0]
    bounds = [-1, *cuts, len(sql)]
    return [sql[a + 1 : b] for a, b in itertools.pairwise(bounds)]


# ----------------------------------------------------------------- helpers


def _check_cluster(cluster: str) -> None:
    if not _CLUSTER_NAME.match(cluster):
        raise ClusterDDLError(f"bad cluster name {cluster!r}: letters, digits, _ . - only")


def _on(cluster: str) -> str:
    return f"ON CLUSTER {quote_identifier(cluster)}"


def _qualified(database: str, table: str) -> str:
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _unquote(name: str) -> str:
    if name.startswith("`") and name.endswith("`"):
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


# -------------------------------------------------------------------- apply


def migrate_cluster(settings: ClickHouseSettings, cluster: str) -> list[str]:
    """Create the database and apply pending migrations ON CLUSTER; idempotent.

    Connects to one node of the cluster (``HEATMAP_CLICKHOUSE_URL``); every
    ``ON CLUSTER`` statement waits (``distributed_ddl_task_timeout``) until
    all nodes ran it. Returns the names applied by this call.
    """
    _check_cluster(cluster)
    db = settings.database
    # Pure transformation first: an unsupported statement fails before any DDL runs.
    plan = [(m, cluster_migration_statements(m, cluster, db)) for m in load_migrations()]
    admin = connect(settings, database="default")
    try:
        admin.command(database_statement(cluster, db))
        admin.command(ledger_statement(cluster, db))
    finally:
        admin.close()
    client = connect(settings)
    try:
        done = {
            row[0]
            for row in client.query(
                "SELECT version FROM schema_migrations",
                settings={"select_sequential_consistency": 1},
            ).result_rows
        }
        applied = apply_pending(client, plan, done, f" on cluster {cluster}")
        apply_retention(client, retention(settings), db, quote_identifier(db), _on(cluster))
        return applied
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m heatmap.clickhouse_cluster CLUSTER [DATABASE]", file=sys.stderr)
        return 2
    print(render_cluster_sql(args[0], args[1] if len(args) > 1 else "heatmap"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
