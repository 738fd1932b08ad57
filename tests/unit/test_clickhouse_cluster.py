"""The cluster form of the DDL (``heatmap migrate --cluster``): pure SQL transformation.

No cluster runs here (no ClickHouse server, no Keeper). What is checked: every
migration file transforms; the output has ON CLUSTER, Replicated engines with
the replica path first and the original engine arguments kept, a Distributed
table per table; and the real ClickHouse parser (chDB's ``formatQuery``, in a
child process so no chDB path of the test session is touched) accepts it all.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from heatmap.clickhouse import load_migrations, split_statements
from heatmap.clickhouse_cluster import (
    LEDGER_REPLICA_PATH,
    REPLICA_PATH,
    ClusterDDLError,
    cluster_migration_statements,
    cluster_statements,
    database_statement,
    distributed_name,
    ledger_statement,
    main,
    render_cluster_sql,
)

CLUSTER = "heatmap_cluster"
DB = "heatmap"
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)", re.IGNORECASE)
_ENGINE = re.compile(r"ENGINE\s*=\s*(\w+)(?:\(([^\n]*)\))?", re.IGNORECASE)


def _tables() -> dict[str, tuple[str, str]]:
    """table -> (engine, engine args) from the single-server DDL."""
    found = {}
    for migration in load_migrations():
        for statement in migration.statements:
            create = _CREATE.search(statement)
            engine = _ENGINE.search(statement)
            if create and engine:
                found[create.group(1)] = (engine.group(1), engine.group(2) or "")
    return found


def test_single_server_ddl_is_untouched() -> None:
    for migration in load_migrations():
        for statement in migration.statements:
            assert "ON CLUSTER" not in statement.upper()
            assert "Replicated" not in statement
            assert "Distributed" not in statement


@pytest.mark.parametrize("migration", load_migrations(), ids=lambda m: m.name)
def test_every_migration_transforms(migration: object) -> None:
    from heatmap.clickhouse import Migration

    assert isinstance(migration, Migration)
    out = cluster_migration_statements(migration, CLUSTER, DB)
    assert out
    for statement in out:
        assert f"ON CLUSTER `{CLUSTER}`" in statement


def test_each_table_becomes_replicated_with_its_args_and_gets_a_distributed_twin() -> None:
    tables = _tables()
    assert {"touch_cells_by_user", "touch_cells", "touch_cells_64", "ingest_batches"} <= set(tables)
    statements = [
        s for m in load_migrations() for s in cluster_migration_statements(m, CLUSTER, DB)
    ]
    for table, (engine, args) in tables.items():
        local = [
            s
            for s in statements
            if f"`{DB}`.`{table}` ON CLUSTER" in s and s.startswith("CREATE TABLE")
        ]
        assert len(local) == 1, table
        expected_args = ", ".join(
            a for a in (f"'{REPLICA_PATH}'", "'{replica}'", args.strip()) if a
        )
        assert f"ENGINE = Replicated{engine}({expected_args})" in local[0]
        # the column list and every clause after ENGINE survive verbatim
        source = next(
            s
            for m in load_migrations()
            for s in m.statements
            if _CREATE.search(s) and _CREATE.search(s).group(1) == table  # type: ignore[union-attr]
        )
        for line in source.splitlines()[1:]:
            if not line.strip().startswith("ENGINE"):
                assert line.strip() in local[0], (table, line)
        twin = [s for s in statements if f"`{DB}`.`{distributed_name(table)}` ON CLUSTER" in s]
        assert len(twin) == 1, table
        assert f"AS `{DB}`.`{table}`" in twin[0]
        assert f"ENGINE = Distributed('{CLUSTER}', '{DB}', '{table}')" in twin[0]
        # no sharding key: ClickHouse refuses multi-shard inserts through it (by design)
        assert re.search(r"Distributed\('[^']*', '[^']*', '[^']*'\)", twin[0])
        assert statements.index(local[0]) < statements.index(twin[0])


def test_engine_arguments_are_kept_after_the_replica_path() -> None:
    for source, engine in [
        ("ReplacingMergeTree(version)", "ReplicatedReplacingMergeTree"),
        ("SummingMergeTree((a, b))", "ReplicatedSummingMergeTree"),
        ("CollapsingMergeTree(sign)", "ReplicatedCollapsingMergeTree"),
        ("MergeTree()", "ReplicatedMergeTree"),
        ("MergeTree", "ReplicatedMergeTree"),
    ]:
        stmt = (
            "CREATE TABLE t (a UInt8 COMMENT 'has ENGINE = Memory; and (parens', b UInt8)\n"
            f"ENGINE = {source}\nORDER BY a"
        )
        local, dist = cluster_statements(stmt, "c1", "db")
        inner = source[source.find("(") + 1 : -1] if "(" in source else ""
        want = ", ".join(x for x in (f"'{REPLICA_PATH}'", "'{replica}'", inner) if x)
        assert f"ENGINE = {engine}({want})\nORDER BY a" in local
        assert "COMMENT 'has ENGINE = Memory; and (parens'" in local
        assert local.startswith("CREATE TABLE `db`.`t` ON CLUSTER `c1`\n")
        assert "ENGINE = Distributed('c1', 'db', 't')" in dist


def test_alter_and_drop_run_on_cluster_and_mirror_on_the_distributed_table() -> None:
    out = cluster_statements(
        "ALTER TABLE touch_cells ADD COLUMN IF NOT EXISTS os LowCardinality(String) DEFAULT ''",
        CLUSTER,
        DB,
    )
    assert out == [
        f"ALTER TABLE `{DB}`.`touch_cells` ON CLUSTER `{CLUSTER}` ADD COLUMN IF NOT EXISTS os "
        "LowCardinality(String) DEFAULT ''",
        f"ALTER TABLE `{DB}`.`touch_cells_all` ON CLUSTER `{CLUSTER}` ADD COLUMN IF NOT EXISTS os "
        "LowCardinality(String) DEFAULT ''",
    ]
    codec = cluster_statements(
        "ALTER TABLE touch_cells MODIFY COLUMN cell_y CODEC(Delta, ZSTD(1))", "c", DB
    )
    assert len(codec) == 1  # codecs belong to stored parts: the Distributed table has none
    mixed = cluster_statements(
        "ALTER TABLE touch_cells MODIFY COLUMN cell_y CODEC(T64), ADD COLUMN os String", "c", DB
    )
    assert mixed[1] == f"ALTER TABLE `{DB}`.`touch_cells_all` ON CLUSTER `c` ADD COLUMN os String"
    ttl = cluster_statements("ALTER TABLE touch_cells MODIFY TTL hour + INTERVAL 1 YEAR", "c", DB)
    assert len(ttl) == 1  # not a column change: the Distributed table has no TTL
    dropped = cluster_statements("DROP TABLE IF EXISTS touch_cells_64", "c", DB)
    assert dropped[0].startswith(f"DROP TABLE IF EXISTS `{DB}`.`touch_cells_64_all` ON CLUSTER")
    assert dropped[1].startswith(f"DROP TABLE IF EXISTS `{DB}`.`touch_cells_64` ON CLUSTER")


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE t (a UInt8) ENGINE = Memory",
        "CREATE TABLE t (a UInt8) ENGINE = ReplicatedMergeTree('/p', '{replica}') ORDER BY a",
        "CREATE TABLE t (a UInt8) ORDER BY a",
        "CREATE MATERIALIZED VIEW v TO t AS SELECT 1",
        "INSERT INTO t VALUES (1)",
    ],
)
def test_statements_without_a_cluster_form_are_refused(statement: str) -> None:
    with pytest.raises(ClusterDDLError):
        cluster_statements(statement, CLUSTER, DB)


@pytest.mark.parametrize("cluster", ["", "a b", "x`y", "c;DROP"])
def test_bad_cluster_names_are_refused(cluster: str) -> None:
    with pytest.raises(ClusterDDLError):
        cluster_statements("DROP TABLE t", cluster, DB)


def test_database_and_ledger_are_on_cluster_and_replicated_everywhere() -> None:
    assert database_statement(CLUSTER, DB) == (
        f"CREATE DATABASE IF NOT EXISTS `{DB}` ON CLUSTER `{CLUSTER}`"
    )
    ledger = ledger_statement(CLUSTER, DB)
    assert f"`{DB}`.schema_migrations ON CLUSTER `{CLUSTER}`" in ledger
    assert f"ReplicatedMergeTree('{LEDGER_REPLICA_PATH}', '{{replica}}')" in ledger
    assert "{shard}" not in ledger  # one ledger for the whole cluster


def test_rendered_script_splits_like_a_migration_file(capsys: pytest.CaptureFixture[str]) -> None:
    script = render_cluster_sql(CLUSTER, DB)
    statements = split_statements(script)
    n_tables = len(_tables())
    n_alters = sum(s.startswith("ALTER") for m in load_migrations() for s in m.statements)
    # database + ledger, each table and its Distributed twin, each ALTER once
    assert len(statements) == 2 + 2 * n_tables + n_alters
    assert main([CLUSTER, DB]) == 0
    assert capsys.readouterr().out == script
    assert main([]) == 2


_PARSE = """
import json, sys
import chdb
out = []
for s in json.load(sys.stdin):
    quoted = s.replace("\\\\", "\\\\\\\\").replace("'", "\\\\'")
    q = "SELECT formatQuerySingleLine('" + quoted + "')"
    out.append(str(chdb.query(q, "TSVRaw")).strip())
print(json.dumps(out))
"""


def test_clickhouse_parses_every_cluster_statement() -> None:
    pytest.importorskip("chdb")
    statements = split_statements(render_cluster_sql(CLUSTER, DB))
    done = subprocess.run(
        [sys.executable, "-c", _PARSE],
        input=json.dumps(statements),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    formatted = json.loads(done.stdout)
    assert len(formatted) == len(statements)
    for text in formatted:
        assert f"ON CLUSTER {CLUSTER}" in text
    assert sum("ENGINE = ReplicatedAggregatingMergeTree(" in t for t in formatted) == 3
    assert sum("ENGINE = ReplicatedReplacingMergeTree(" in t for t in formatted) == 1
    assert sum("ENGINE = Distributed(" in t for t in formatted) == len(_tables())


class _Recorder:
    """Stands in for the ClickHouse client to check ORDER only (the SQL is checked above)."""

    def __init__(self, log: list[str], done: set[int]) -> None:
        self.log = log
        self.done = done

    def command(self, sql: str) -> None:
        self.log.append(sql)

    def query(
        self,
        sql: str,
        settings: dict[str, object] | None = None,
        parameters: dict[str, object] | None = None,
    ) -> object:
        self.log.append(sql)
        if "system.tables" in sql:  # the retention step: tables without a TTL yet
            assert parameters is not None
            tables: list[str] = parameters["tables"]  # type: ignore[assignment]
            rows: list[list[object]] = [[t, f"CREATE TABLE {DB}.{t} ENGINE = X"] for t in tables]
            return type("Result", (), {"result_rows": rows})()
        assert settings == {"select_sequential_consistency": 1}
        rows = [[v] for v in sorted(self.done)]
        return type("Result", (), {"result_rows": rows})()

    def insert(self, table: str, rows: list[list[object]], column_names: list[str]) -> None:
        self.log.append(f"INSERT {table} {rows[0][0]}")
        self.done.add(int(str(rows[0][0])))

    def close(self) -> None:
        pass


def test_migrate_cluster_creates_ledger_first_and_skips_applied_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from heatmap import clickhouse_cluster
    from heatmap.settings import ClickHouseSettings

    log: list[str] = []
    done: set[int] = set()
    monkeypatch.setattr(
        clickhouse_cluster, "connect", lambda settings, database=None: _Recorder(log, done)
    )
    settings = ClickHouseSettings(url="http://u:p@127.0.0.1:8123/heatmap", database=DB)
    applied = clickhouse_cluster.migrate_cluster(settings, CLUSTER)
    assert applied == [f"{m.version:03d}_{m.name}" for m in load_migrations()]
    assert log[0] == database_statement(CLUSTER, DB)
    assert log[1] == ledger_statement(CLUSTER, DB)
    inserts = [i for i, line in enumerate(log) if line.startswith("INSERT schema_migrations")]
    assert len(inserts) == len(load_migrations())
    ttls = [line for line in log if "MODIFY TTL" in line]
    assert len(ttls) == 3
    assert all(f"ON CLUSTER `{CLUSTER}` MODIFY TTL" in line for line in ttls)
    assert all(log.index(line) > inserts[-1] for line in ttls)  # after the migrations
    log.clear()
    assert clickhouse_cluster.migrate_cluster(settings, CLUSTER) == []
    assert not [line for line in log if "ENGINE" in line and "schema_migrations" not in line]
    with pytest.raises(ClusterDDLError):
        clickhouse_cluster.migrate_cluster(settings, "bad name")
