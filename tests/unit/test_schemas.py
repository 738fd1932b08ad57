from __future__ import annotations

from pathlib import Path

import pytest

from heatmap.clickhouse import load_migrations, split_statements
from schemas import codegen
from schemas.heatmap.v1 import heatmap_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    assert codegen.stale_files() == [], "run `python -m schemas.codegen`"


def test_contract_copy_only_adds_to_the_shared_contract() -> None:
    shared = ROOT.parent / "shared" / "contract" / "heatmap.proto"
    if not shared.exists():
        pytest.skip("the agreed contract is not beside this clone (../shared/contract)")
    ours = (ROOT / "schemas/heatmap/v1/heatmap.proto").read_text()
    for line in shared.read_text().splitlines():
        if "=" in line and ";" in line:  # every field, enum value and option stays as it is
            assert line.strip() in ours, line


def test_contract_methods_are_the_six() -> None:
    service = heatmap_pb2.DESCRIPTOR.services_by_name["HeatmapService"]
    assert {m.name for m in service.methods} >= {
        "IngestTouchEvents",
        "QueryHeatmapData",
        "ListScreenshots",
        "UploadScreenshot",
        "GetScreenshot",
        "RenderHeatmap",
    }


def test_migrations_are_numbered_and_split() -> None:
    migrations = load_migrations()
    versions = [m.version for m in migrations]
    # Unique and in order; ranges are handed out per piece of work (010-019:
    # privacy), so a number may be skipped.
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    for migration in migrations:
        assert migration.statements
        assert all(s.upper().startswith(("CREATE", "ALTER")) for s in migration.statements)


def test_split_statements_drops_comment_lines() -> None:
    sql = (
        "-- a; comment\nCREATE TABLE a (x UInt8) ENGINE = Log;\n"
        "\n-- b\nCREATE TABLE b (y UInt8) ENGINE = Log;\n"
    )
    assert split_statements(sql) == (
        "CREATE TABLE a (x UInt8) ENGINE = Log",
        "CREATE TABLE b (y UInt8) ENGINE = Log",
    )
