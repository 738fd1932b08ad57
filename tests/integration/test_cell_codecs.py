"""The cell tables' column codecs (migrations 020 and 021) on the real engine
(chDB): declared as the migrations say, and rows written, merged and read
back under them keep every count."""

from __future__ import annotations

import numpy as np
from clickhouse_connect.driver.client import Client

from heatmap.clickhouse import connect
from heatmap.settings import ClickHouseSettings
from tests.worker_support import TOUCH_CELLS_COLUMNS


def codecs(client: Client, table: str) -> dict[str, str]:
    rows = client.query(
        "SELECT name, compression_codec FROM system.columns "
        "WHERE database = currentDatabase() AND table = {t:String}",
        parameters={"t": table},
    ).result_rows
    return {str(name): str(codec) for name, codec in rows}


def test_cell_y_codec_per_table(clickhouse: ClickHouseSettings) -> None:
    client = connect(clickhouse)
    try:
        # Sorted runs of cell_y in the all-users table: Delta (021); short runs
        # in the per-user table: T64 (020); 8-bit cells of the 64 table: Delta.
        assert codecs(client, "touch_cells")["cell_y"] == "CODEC(Delta(2), ZSTD(1))"
        assert codecs(client, "touch_cells_by_user")["cell_y"] == "CODEC(T64, ZSTD(1))"
        assert codecs(client, "touch_cells_64")["cell_y"] == "CODEC(Delta(1), ZSTD(1))"
        assert codecs(client, "touch_cells")["cell_x"] == "CODEC(Delta(2), ZSTD(1))"
    finally:
        client.close()


def test_counts_survive_merges_under_the_codecs(clickhouse: ClickHouseSettings) -> None:
    """Three inserts of overlapping cells (clustered like taps, with the 0 and
    511 edges and counts up to 2**40), merged into one part: every cell's sum
    equals the sum computed here."""
    rng = np.random.default_rng(21)
    client = connect(clickhouse)
    expected: dict[tuple[int, int, int], int] = {}
    try:
        for _ in range(3):
            n = 5_000
            cx = np.clip(rng.normal(300, 40, n), 0, 511).astype(int)
            cy = np.clip(rng.normal(100, 60, n), 0, 511).astype(int)
            cx[:2], cy[:2] = (0, 511), (511, 0)
            hour = rng.integers(0, 3, n)
            events = rng.choice([1, 1, 1, 2, 7, 2**40], n)
            rows = []
            for x, y, h, e in zip(
                cx.tolist(), cy.tolist(), hour.tolist(), events.tolist(), strict=True
            ):
                expected[(h, x, y)] = expected.get((h, x, y), 0) + e
                rows.append(["home", "", 1, 1_790_000_000 + 3600 * h, x, y, e, 0])
            client.insert(
                "touch_cells",
                rows,
                column_names=TOUCH_CELLS_COLUMNS,
            )
        client.command("OPTIMIZE TABLE touch_cells FINAL")
        parts = client.query(
            "SELECT count() FROM system.parts WHERE database = currentDatabase() "
            "AND table = 'touch_cells' AND active"
        ).result_rows[0][0]
        assert parts == 1
        got = {
            (int(h), int(x), int(y)): int(n)
            for h, x, y, n in client.query(
                "SELECT toUnixTimestamp(hour) - 1790000000, cell_x, cell_y, sum(events) "
                "FROM touch_cells GROUP BY hour, cell_x, cell_y"
            ).result_rows
        }
        assert got == {(3600 * h, x, y): n for (h, x, y), n in expected.items()}
    finally:
        client.close()
