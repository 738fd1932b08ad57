"""``heatmap migrate`` against the real ClickHouse engine (chDB here, a server elsewhere)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from heatmap.clickhouse import connect, load_migrations, migrate
from heatmap.settings import ClickHouseSettings
from tests.worker_support import TOUCH_CELLS_COLUMNS


def test_migrate_twice_is_idempotent_then_insert_and_select(
    clickhouse: ClickHouseSettings,
) -> None:
    # The fixture already migrated once; a second run applies nothing.
    assert migrate(clickhouse) == []
    client = connect(clickhouse)
    try:
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
        assert {"touch_cells", "touch_cells_by_user", "touch_cells_64", "ingest_batches"} <= tables
        hour = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
        rows = [
            ["Home", "", 1, hour, 10, 20, 3, 0],
            ["Home", "", 1, hour, 10, 20, 2, 0],  # same key: summed on read
            ["Cart", "c1", 3, hour, 0, 511, 1, 0],
        ]
        client.insert(
            "touch_cells",
            rows,
            column_names=TOUCH_CELLS_COLUMNS,
        )
        result = client.query(
            "SELECT screen_name, event_type_name, sum(events) FROM touch_cells "
            "WHERE screen_name = {s:String} GROUP BY screen_name, event_type_name",
            parameters={"s": "Home"},
        ).result_rows
        assert result == [("Home", "TAP", 5)]
        comments = client.query(
            "SELECT count() FROM system.columns WHERE database = currentDatabase() "
            "AND table = 'touch_cells' AND comment = ''"
        ).result_rows
        assert comments == [(1,)]  # only the ALIAS column has no comment of its own
    finally:
        client.close()


def test_heatmap_migrate_command_on_a_fresh_chdb_path(tmp_path: Path) -> None:
    """The console entry point, in its own process (a process owns one chDB path)."""
    env = {
        **os.environ,
        "HEATMAP_CLICKHOUSE_URL": f"chdb://{tmp_path}/store",
        "HEATMAP_CLICKHOUSE_DATABASE": "analytics",
        "HEATMAP_LOG_FORMAT": "text",
    }
    if os.environ.get("HEATMAP_CLICKHOUSE_URL"):
        env["HEATMAP_CLICKHOUSE_URL"] = os.environ["HEATMAP_CLICKHOUSE_URL"]
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "heatmap_cli.cli", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0]["applied"] == [f"{m.version:03d}_{m.name}" for m in load_migrations()]
    assert runs[0]["applied"][:3] == [
        "001_touch_cells",
        "002_ingest_batches",
        "003_screen_cell_projections",
    ]
    assert runs[1]["applied"] == []
