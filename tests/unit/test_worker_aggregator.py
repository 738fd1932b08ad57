"""The numpy aggregator and Native encoder, checked against a per-event count (no I/O)."""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

import numpy as np
import pytest

from schemas.touch_batch import TouchBatch
from stream_workers.aggregator import (
    TABLE_NAMES,
    TABLES,
    Block,
    Record,
    _distinct_hours,
    _group,
    _SharedKeys,
    _unique_counts,
    aggregate,
    cells,
    month_start,
    yyyymm,
)
from stream_workers.dedup import BatchLedger
from stream_workers.native import LowCardinalityColumn, encode_block, varint
from tests.worker_support import expected_counts, fleet_batches, fleet_month, shifted


def read_native(payload: bytes) -> dict[str, list[Any]]:
    """A reader for the few types the worker writes (the test's own, independent of native.py)."""
    pos = 0

    def uvarint() -> int:
        nonlocal pos
        shift = result = 0
        while True:
            byte = payload[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    def text() -> str:
        nonlocal pos
        size = uvarint()
        value = payload[pos : pos + size].decode()
        pos += size
        return value

    formats = {"UInt8": "B", "UInt16": "H", "UInt32": "I", "UInt64": "Q", "Int64": "q"}
    n_columns, n_rows = uvarint(), uvarint()
    columns: dict[str, list[Any]] = {}
    for _ in range(n_columns):
        name, kind = text(), text()
        if kind == "String":
            columns[name] = [text() for _ in range(n_rows)]
        elif kind == "LowCardinality(String)":
            version, flags, n_keys = struct.unpack_from("<QQQ", payload, pos)
            pos += 24
            assert version == 1
            assert flags & (1 << 9)
            keys = [text() for _ in range(n_keys)]
            (rows,) = struct.unpack_from("<Q", payload, pos)
            pos += 8
            assert rows == n_rows
            fmt = "<" + "BHI"[flags & 0xFF] * n_rows
            columns[name] = [keys[i] for i in struct.unpack_from(fmt, payload, pos)]
            pos += struct.calcsize(fmt)
        else:
            fmt = "<" + formats[kind] * n_rows
            columns[name] = list(struct.unpack_from(fmt, payload, pos))
            pos += struct.calcsize(fmt)
    assert pos == len(payload)
    return columns


def stored(blocks: list[Block], topic: str = "t") -> tuple[dict[str, Counter[Any]], list[Any]]:
    counts: dict[str, Counter[Any]] = {t: Counter() for t in TABLE_NAMES}
    markers = []
    for block in blocks:
        cols = read_native(block.payload)
        assert tuple(cols) == block.column_names
        for i in range(len(cols["screen_name"])):
            if cols["screen_name"][i] == "":
                markers.append(
                    (block.table, block.month, cols["campaign_id"][i], cols["source_offset"][i])
                )
                assert cols["events"][i] == 0
                assert yyyymm(np.array([cols["hour"][i]]))[0] == block.month
                continue
            key = [cols["screen_name"][i]]
            if "user_id" in cols:
                key.append(cols["user_id"][i])
            key += [cols[c][i] for c in ("campaign_id", "event_type", "hour", "cell_x", "cell_y")]
            assert yyyymm(np.array([cols["hour"][i]]))[0] == block.month
            counts[block.table][tuple(key)] += cols["events"][i]
    return counts, markers


def test_cells_floor_and_clamp() -> None:
    v = np.array([0.0, 0.001, 0.5, 0.999, 1.0, 1 / 512, 0.0], np.float32)
    v[-1] = np.nextafter(np.float32(1 / 512), np.float32(0))
    assert cells(v, 512).tolist() == [0, 0, 256, 511, 511, 1, 0]
    assert cells(v, 64).tolist() == [0, 0, 32, 63, 63, 0, 0]
    # every grid of the contract is an exact roll-up of the 512 grid
    rng = np.random.default_rng(1).random(100_000, dtype=np.float32)
    for g in (8, 16, 32, 64, 128, 256):
        assert np.array_equal(cells(rng, 512) // (512 // g), cells(rng, g))


def test_month_helpers() -> None:
    assert yyyymm(np.array([0, 1_795_651_200, 1_798_761_599, 1_798_761_600])).tolist() == [
        197001,
        202611,
        202612,
        202701,
    ]
    assert month_start(202612) == 1_796_083_200


def test_aggregate_counts_every_event_once_in_every_table() -> None:
    batches = fleet_batches(60, 500)
    late = [shifted(batches[0], 24 * 40, "late-1")]  # 40 days earlier: another month
    records = [Record(i % 3, i // 3, b) for i, b in enumerate(batches + late)]
    blocks = aggregate(records, "t", {})
    counts, markers = stored(blocks)
    expected = expected_counts(batches + late)
    for table in TABLE_NAMES:
        assert counts[table] == expected[table], table
    months = (fleet_month(2), fleet_month())  # 40 days before the 2nd: two months earlier
    assert {(b.table, b.month) for b in blocks} == {(t, m) for t in TABLE_NAMES for m in months}
    # one marker per (table, month, source partition), carrying the flush's highest offset
    highest = {p: max(r.offset for r in records if r.partition == p) for p in range(3)}
    assert sorted(markers) == sorted(
        (t, m, f"t#{p}", highest[p]) for t in TABLE_NAMES for m in months for p in range(3)
    )
    assert all(b.rows == len(read_native(b.payload)["events"]) - 3 for b in blocks)


def test_watermarks_drop_events_already_stored_per_table_and_month() -> None:
    batches = fleet_batches(10, 100)
    records = [Record(0, 100 + i, b) for i, b in enumerate(batches)]
    month = fleet_month()
    # touch_cells_by_user holds offsets <= 104 of this month; the others hold nothing.
    blocks = aggregate(records, "t", {("touch_cells_by_user", 0, month): 104})
    counts, _ = stored(blocks)
    assert counts["touch_cells_by_user"] == expected_counts(batches[5:])["touch_cells_by_user"]
    assert counts["touch_cells"] == expected_counts(batches)["touch_cells"]
    # a watermark of another month or partition does not hide these events
    blocks = aggregate(
        records, "t", {("touch_cells", 0, fleet_month(1)): 999, ("touch_cells", 1, month): 999}
    )
    assert stored(blocks)[0]["touch_cells"] == expected_counts(batches)["touch_cells"]
    # everything stored: nothing to insert
    all_done = {(t, 0, month): 109 for t in TABLE_NAMES}
    assert aggregate(records, "t", all_done) == []


def test_many_users_and_hours() -> None:
    batch = fleet_batches(1, 200)[0]
    records = []
    for i in range(300):
        b = TouchBatch(
            **{
                **batch.__dict__,
                "user_id": f"u{i}",
                "timestamp_ms": batch.timestamp_ms + i * 3_600_000 * 24 * 7,
            }
        )
        records.append(Record(0, i, b))
    counts, _ = stored(aggregate(records, "t", {}))
    assert counts == expected_counts(r.batch for r in records)


def test_group_falls_back_to_row_unique_for_wide_keys() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 1000), rng.integers(0, 7, 1000)
    for radix in (10, 2**40):  # packed int64 key, then np.unique over rows
        (ua, ub), counts = _group([(a, radix), (b, radix)])
        assert Counter(
            dict(zip(zip(ua.tolist(), ub.tolist(), strict=True), counts.tolist(), strict=True))
        ) == Counter(zip(a.tolist(), b.tolist(), strict=True))


def test_group_encodings_agree_in_rows_and_order() -> None:
    # Bit fields (<= 63 bits), mixed radix (64 bits of fields, product < 2**62)
    # and whole rows (product >= 2**62): the same rows, in the same (sorted) order.
    rng = np.random.default_rng(5)
    columns = [rng.integers(0, 9, 5000) for _ in range(4)]
    expected = sorted(Counter(zip(*(c.tolist() for c in columns), strict=True)).items())
    for radix in (9, 2**15 + 1, 2**16 + 1):
        grouped, counts = _group([(c, radix) for c in columns])
        got = list(
            zip(zip(*(g.tolist() for g in grouped), strict=True), counts.tolist(), strict=True)
        )
        assert got == expected, radix
    (only,), counts = _group([(np.zeros(3, dtype=np.int64), 1)])  # radix 1: no bits at all
    assert only.tolist() == [0]
    assert counts.tolist() == [3]


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("months", [1, 3])
def test_shared_keys_group_like_group_field_by_field(wide: bool, months: int) -> None:
    # The keys packed from shared parts give every table the rows, order and
    # counts of ``_group`` over that table's fields; wide keys (over 63 bits)
    # take ``_group`` itself. With and without a watermark mask.
    rng = np.random.default_rng(11 + months)
    n = 20_000
    users = 2**40 if wide else 300
    month_code = np.sort(rng.integers(0, months, n)) if months > 1 else None
    screen, user = rng.integers(0, 7, n), rng.integers(0, min(users, 10**6), n)
    middle = [(rng.integers(0, 3, n), 3), (rng.integers(1, 4, n), 4), (rng.integers(0, 30, n), 30)]
    cell_x, cell_y = rng.integers(0, 512, n), rng.integers(0, 512, n) // 64  # some repeats
    keys = _SharedKeys(month_code, months, [(screen, 7)], (user, users), middle, cell_x, cell_y)
    keep = rng.random(n) < 0.7
    for spec in TABLES:
        for mask in (None, keep):
            fields = keys.fields(spec)
            if mask is not None:
                fields = [(values[mask], radix) for values, radix in fields]
            want, want_counts = _group(fields)
            rows = keys.group(spec, mask)
            assert (rows.fields is not None) == (wide and spec.per_user)
            assert rows.counts.tolist() == want_counts.tolist()
            for i, column in enumerate(want):
                assert rows.field(i).tolist() == column.tolist(), (spec.name, i)
                written = np.empty(len(column), dtype=np.uint32)
                rows.write(i, written)
                assert written.tolist() == column.tolist(), (spec.name, i)


def test_unique_counts_and_distinct_hours_match_numpy() -> None:
    rng = np.random.default_rng(2)
    key = rng.integers(0, 1000, 10_000)
    unique, counts = np.unique(key, return_counts=True)
    got, got_counts = _unique_counts(key.copy())
    assert got.tolist() == unique.tolist()
    assert got_counts.tolist() == counts.tolist()
    for span_h in (1, 500, 10**7):  # the last spans more hours than the counting path takes
        hour_s = (1_790_000_000 // 3600 + rng.integers(0, span_h, 5000)) * 3600
        hours, code = np.unique(hour_s, return_inverse=True)
        got_hours, got_code = _distinct_hours(hour_s.copy())
        assert got_hours.tolist() == hours.tolist()
        assert got_code.tolist() == code.tolist()


def test_ledger_duplicate_only_at_a_higher_offset() -> None:
    ledger = BatchLedger()
    assert ledger.admit((0, "u", "b1"), 10, {}) == (False, True)  # new
    assert ledger.admit((0, "u", "b1"), 10, {}) == (False, False)  # the first copy, replayed
    assert ledger.admit((0, "u", "b1"), 11, {}) == (True, False)  # a retry
    assert ledger.admit((0, "u", "b2"), 12, {(0, "u", "b2"): 5}) == (True, False)  # stored before
    assert ledger.admit((0, "u", "b3"), 5, {(0, "u", "b3"): 9}) == (False, True)  # a lower copy
    assert ledger.admit((1, "u", "b1"), 12, {}) == (False, True)  # another partition
    ledger.forget()
    assert not ledger.loaded(0)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32])
def test_varint(value: int) -> None:
    encoded = varint(value)
    decoded = sum((b & 0x7F) << (7 * i) for i, b in enumerate(encoded))
    assert decoded == value
    assert all(b & 0x80 for b in encoded[:-1])
    assert not encoded[-1] & 0x80


@pytest.mark.parametrize("keys", [1, 255, 256, 70_000])
def test_low_cardinality_column_index_widths(keys: int) -> None:
    dictionary = [f"k{i}" for i in range(keys)]
    codes = np.random.default_rng(keys).integers(0, keys, 1000)
    payload = encode_block(
        [("c", "LowCardinality(String)", LowCardinalityColumn(dictionary, codes))], 1000
    )
    assert read_native(payload)["c"] == [dictionary[i] for i in codes]
