"""The suppression rule the workers apply, and the unique-users wire encoding (no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from query_api.point_encoding import TOTAL_USERS_KEY, dense, dense_users, encode_all_users
from stream_workers.suppression import ERASE, UNERASE, SuppressionRow, Suppressions


def test_latest_version_with_a_cut_below_the_offset_decides() -> None:
    s = Suppressions()
    s.add([SuppressionRow(1, "u", ERASE), SuppressionRow(2, "v", ERASE)])
    s.add([SuppressionRow(3, "u", UNERASE)])
    s.set_cuts({(0, 1): 10, (0, 2): 12, (0, 3): 20, (1, 1): -1, (1, 2): -1, (1, 3): 5})
    assert s.version == 3
    assert not s.suppressed("u", 0, 10)  # at the cut: decided under the older state
    assert s.suppressed("u", 0, 11)
    assert s.suppressed("u", 0, 20)
    assert not s.suppressed("u", 0, 21)  # un-erased from its cut on
    assert s.suppressed("u", 1, 0)
    assert s.suppressed("u", 1, 5)
    assert not s.suppressed("u", 1, 6)
    assert s.suppressed("v", 0, 13)
    assert not s.suppressed("v", 0, 12)
    assert not s.suppressed("w", 0, 100)


def test_a_version_without_a_cut_is_never_applied_silently() -> None:
    s = Suppressions()
    s.add([SuppressionRow(1, "u", ERASE)])
    assert s.missing([0, 1]) == [(0, 1), (1, 1)]
    s.set_cuts({(0, 1): 4})
    assert s.missing([0, 1]) == [(1, 1)]
    with pytest.raises(RuntimeError):
        s.suppressed("u", 1, 9)
    s.forget([0])
    assert s.missing([0]) == [(0, 1)]


def test_cells_with_unique_users_parse_back_exactly() -> None:
    grid = 64
    rng = np.random.default_rng(5)
    keys = rng.choice(grid * grid, 500, replace=False).astype(np.int64)
    counts = rng.integers(0, 2**40, 500).astype(np.uint64)
    counts[:5] = [0, 1, 127, 128, 2**62]
    users_rows = [[*keys.tolist(), TOTAL_USERS_KEY], [*(k % 300 for k in keys), 999]]
    users, total = dense_users(grid, users_rows)
    assert total == 999
    reply = encode_all_users(grid, dense(grid, keys, counts), users, total).message()
    keep = counts > 0
    assert reply.total_count == int(counts[keep].sum())
    assert reply.unique_users == 999
    got = {
        (round(p.y * grid - 0.5) * grid + round(p.x * grid - 0.5)): (p.count, p.unique_users)
        for p in reply.data_points
    }
    expected = {
        int(k): (int(c), int(k) % 300) for k, c in zip(keys[keep], counts[keep], strict=True)
    }
    assert got == expected
    plain = encode_all_users(grid, dense(grid, keys, counts)).message()
    assert [p.count for p in plain.data_points] == [p.count for p in reply.data_points]
