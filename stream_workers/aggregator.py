"""Touch batches -> grid-cell rows per table and month, vectorised with numpy.

One flush is a list of ``Record`` (decoded, valid, not duplicate batches,
with their Kafka partition and offset). ``aggregate`` concatenates the
columns of all batches, computes the 512-grid cell and the UTC hour of every
event in a few numpy passes, groups identical keys with one ``np.unique`` per
table and returns one ``Block`` per (table, month partition): the aggregated
rows plus one marker row per source Kafka partition, encoded as one Native
block, ready to be inserted as ONE atomic insert.

Events of a record whose offset is at or below the table's watermark for
(partition, month) are already in that table (a replay after a crash) and are
left out of that table's rows. See docs/exactly-once.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.touch_batch import TouchBatch
from stream_workers.native import (
    NUMPY_TYPES,
    Column,
    LowCardinalityColumn,
    NumberColumn,
    encode_block,
    index_dtype,
)

BASE_GRID = 512
MS_PER_HOUR = 3_600_000
# DateTime is UInt32 seconds: events at or after 2106-02-07 cannot be stored.
MAX_TIMESTAMP_MS = (2**32 - MS_PER_HOUR // 1000) * 1000

IntArray = npt.NDArray[np.int64]
LC = "LowCardinality(String)"


@dataclass(frozen=True)
class TableSpec:
    name: str
    per_user: bool
    grid: int
    cell_type: str


TABLES: tuple[TableSpec, ...] = (
    TableSpec("touch_cells_by_user", per_user=True, grid=512, cell_type="UInt16"),
    TableSpec("touch_cells", per_user=False, grid=512, cell_type="UInt16"),
    TableSpec("touch_cells_64", per_user=False, grid=64, cell_type="UInt8"),
)
TABLE_NAMES = tuple(t.name for t in TABLES)

# (table, kafka partition, yyyymm) -> highest offset already in that table.
Watermarks = Mapping[tuple[str, int, int], int]


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    batch: TouchBatch


@dataclass(frozen=True)
class Block:
    """One insert: aggregated rows of one table and month, plus marker rows."""

    table: str
    month: int  # yyyymm of the destination partition
    rows: int  # aggregated rows, markers not included
    events: int  # events those rows count
    markers: Mapping[int, int]  # kafka partition -> highest offset of the flush
    column_names: tuple[str, ...]
    column_types: tuple[str, ...]  # as encoded in the payload (a fenced insert declares them)
    payload: bytes  # Native format


def marker_campaign(topic: str, partition: int) -> str:
    return f"{topic}#{partition}"


def cells(v: npt.NDArray[np.float32], grid: int) -> IntArray:
    """min(floor(v * grid), grid - 1); exact in float32 since grid is a power of two."""
    scaled = (v * np.float32(grid)).astype(np.int64)
    return np.minimum(scaled, grid - 1)


def yyyymm(epoch_s: IntArray) -> IntArray:
    months = epoch_s.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64)
    return (1970 + months // 12) * 100 + months % 12 + 1


def month_start(month: int) -> int:
    """Epoch seconds of the first second of month ``yyyymm``."""
    value = np.datetime64(f"{month // 100:04d}-{month % 100:02d}", "M")
    return int(value.astype("datetime64[s]").astype(np.int64))


class _Dictionary:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def lut(self, values: Sequence[str]) -> IntArray:
        codes = self.codes
        return np.array([codes.setdefault(v, len(codes)) for v in values], dtype=np.int64)

    def sorted(self) -> tuple[list[str], IntArray]:
        """The values in sort order and, per first-seen code, its rank in that order.

        Rank codes make ``np.unique`` return rows in the tables' ORDER BY
        order; ClickHouse sorts a presorted insert block ~2-3x faster.
        """
        values = list(self.codes)
        order = sorted(range(len(values)), key=values.__getitem__)
        rank = np.empty(len(values), dtype=np.int64)
        rank[order] = np.arange(len(values), dtype=np.int64)
        return [values[i] for i in order], rank


def _group(fields: Sequence[tuple[IntArray, int]]) -> tuple[list[IntArray], IntArray]:
    """Distinct tuples of ``fields`` (array, radix) and how often each occurs.

    Rows come out in the lexicographic order of the fields (the tables' ORDER
    BY order) with any of the three key encodings: bit fields when they fit
    in 63 bits (the usual case: shifts and masks to unpack, where an int64
    division per field cost about as much as the sort), a mixed-radix int64
    otherwise, or whole rows.
    """
    widths = [max(radix - 1, 0).bit_length() for _, radix in fields]
    if sum(widths) <= 63:
        key = np.zeros(len(fields[0][0]), dtype=np.int64)
        for (values, _), width in zip(fields, widths, strict=True):
            if width:
                key <<= width
                key |= values
        unique, counts = np.unique(key, return_counts=True)
        unpacked: list[IntArray] = []
        shift = 0
        for width in reversed(widths):
            unpacked.append((unique >> shift) & ((1 << width) - 1))
            shift += width
        return unpacked[::-1], counts.astype(np.int64)
    radix_product = 1
    for _, radix in fields:
        radix_product *= max(radix, 1)
    if radix_product < 2**62:
        key = np.zeros_like(fields[0][0])
        for values, radix in fields:
            key *= max(radix, 1)
            key += values
        unique, counts = np.unique(key, return_counts=True)
        out: list[IntArray] = []
        for _, radix in reversed(fields):
            unique, rest = np.divmod(unique, max(radix, 1))
            out.append(rest)
        return out[::-1], counts.astype(np.int64)
    stacked = np.stack([values for values, _ in fields], axis=1)
    rows, counts = np.unique(stacked, axis=0, return_counts=True)
    return [rows[:, i] for i in range(rows.shape[1])], counts.astype(np.int64)


def _unique_counts(key: IntArray) -> tuple[IntArray, IntArray]:
    """``np.unique(key, return_counts=True)`` for an int64 array the caller gives up:
    sorted in place, without np.unique's copy of the input."""
    key.sort()
    last = np.empty(len(key), dtype=np.bool_)
    np.not_equal(key[1:], key[:-1], out=last[:-1])
    last[-1:] = True
    ends = np.flatnonzero(last)
    return key[ends], np.diff(ends, prepend=-1)


def _distinct_hours(hour_s: IntArray) -> tuple[IntArray, IntArray]:
    """``np.unique(hour_s, return_inverse=True)`` for hour-aligned seconds, by counting
    instead of sorting when the flush spans few hours (always, within the time window)."""
    index = hour_s // 3600
    low = int(index.min())
    span = int(index.max()) - low + 1
    if span > max(1 << 16, 4 * len(index)):
        hours, code = np.unique(hour_s, return_inverse=True)
        return hours, code.astype(np.int64)
    index -= low
    present = np.zeros(span, dtype=np.bool_)
    present[index] = True
    code_of_hour = np.cumsum(present, dtype=np.int64)
    code_of_hour -= 1
    return (np.flatnonzero(present) + low) * 3600, code_of_hour[index]


def _width(radix: int) -> int:
    return max(radix - 1, 0).bit_length()


class _SharedKeys:
    """The three tables' grouping keys, built from shared packed parts.

    Every table's key is ``[month,] screen, [user,] campaign, event_type,
    hour, cell_x, cell_y`` (the ORDER BY); the tables differ only in the user
    field and the cells' grid, so the month+screen head and the
    campaign+type+hour part are packed once per flush, the cells once per
    grid. Same bit layout, hence same rows in the same order, as ``_group``
    builds from the fields one by one (``_group`` still serves keys wider
    than 63 bits).
    """

    def __init__(
        self,
        month_code: IntArray | None,
        months: int,
        head: list[tuple[IntArray, int]],
        user: tuple[IntArray, int],
        middle: list[tuple[IntArray, int]],
        cell_x: IntArray,
        cell_y: IntArray,
    ) -> None:
        self.head = ([(month_code, months)] if month_code is not None else []) + head
        self.user = user
        self.middle = middle
        self.cell_x, self.cell_y = cell_x, cell_y
        self._packed: dict[str, IntArray] = {}

    def fields(self, spec: TableSpec) -> list[tuple[IntArray, int]]:
        shift = int(np.log2(BASE_GRID // spec.grid))
        cells = [(self.cell_x >> shift, spec.grid), (self.cell_y >> shift, spec.grid)]
        return self.head + ([self.user] if spec.per_user else []) + self.middle + cells

    def _pack(self, name: str, fields: Sequence[tuple[IntArray, int]]) -> IntArray:
        packed = self._packed.get(name)
        if packed is None:
            packed = np.zeros(len(self.cell_x), dtype=np.int64)
            for values, radix in fields:
                width = _width(radix)
                if width:
                    packed <<= width
                    packed |= values
            self._packed[name] = packed
        return packed

    def group(self, spec: TableSpec, keep: npt.NDArray[np.bool_] | None) -> _Rows:
        fields = self.fields(spec)
        widths = [_width(radix) for _, radix in fields]
        if sum(widths) > 63:
            if keep is not None:
                fields = [(values[keep], radix) for values, radix in fields]
            grouped, counts = _group(fields)
            return _Rows(counts, fields=grouped)
        grid_bits = 2 * _width(spec.grid)
        key = self._pack("head", self.head) << (sum(widths) - sum(widths[: len(self.head)]))
        if spec.per_user:
            key |= self.user[0] << (sum(widths[len(self.head) + 1 :]))
        key |= self._pack("middle", self.middle) << grid_bits
        key |= self._pack(f"cells{spec.grid}", fields[-2:])
        if keep is not None:
            key = key[keep]
        unique, counts = _unique_counts(key)
        layout = []
        shift = sum(widths)
        for width in widths:
            shift -= width
            layout.append((shift, width))
        return _Rows(counts, keys=unique, layout=tuple(layout))


@dataclass(frozen=True)
class _Rows:
    """The grouped rows of a table: counts, and the key fields either still packed
    (``keys`` and each field's (shift, width)) or unpacked (``fields``, wide keys).

    Packed fields are unpacked by ``write`` straight into their Native
    column, in its dtype: no int64 copy of every field per table.
    """

    counts: IntArray
    keys: IntArray | None = None
    layout: tuple[tuple[int, int], ...] = ()
    fields: list[IntArray] | None = None

    def field(self, i: int) -> IntArray:
        if self.fields is not None:
            return self.fields[i]
        assert self.keys is not None
        shift, width = self.layout[i]
        return (self.keys >> shift) & ((1 << width) - 1)

    def write(self, i: int, out: npt.NDArray[Any], lut: npt.NDArray[Any] | None = None) -> None:
        """Field ``i`` into ``out`` (through ``lut`` if given: ``out = lut[field]``)."""
        if self.fields is not None or lut is not None:
            values = self.field(i)
            if lut is None:
                out[...] = values
            else:
                np.take(lut, values, out=out)
            return
        assert self.keys is not None
        shift, width = self.layout[i]
        shifted = self.keys >> shift if shift else self.keys
        np.bitwise_and(shifted, (1 << width) - 1, out=out, casting="unsafe")

    def rows(self, a: int, b: int, drop_first: bool) -> _Rows:
        """Rows ``a:b``, without the first field if ``drop_first`` (the month's rank)."""
        skip = 1 if drop_first else 0
        if self.fields is not None:
            return _Rows(self.counts[a:b], fields=[f[a:b] for f in self.fields[skip:]])
        assert self.keys is not None
        return _Rows(self.counts[a:b], keys=self.keys[a:b], layout=self.layout[skip:])


def aggregate(
    records: Sequence[Record],
    topic: str,
    watermarks: Watermarks,
    tables: Sequence[TableSpec] = TABLES,
) -> list[Block]:
    if not records:
        return []
    screens, campaigns, users = _Dictionary(), _Dictionary(), _Dictionary()
    lengths = np.fromiter((len(r.batch) for r in records), np.int64, len(records))
    user_of_record = np.fromiter(
        (users.codes.setdefault(r.batch.user_id, len(users.codes)) for r in records),
        np.int64,
        len(records),
    )
    screen = np.concatenate(
        [screens.lut(r.batch.screen_dict)[r.batch.screen_index] for r in records]
    )
    campaign = np.concatenate(
        [campaigns.lut(r.batch.campaign_dict)[r.batch.campaign_index] for r in records]
    )
    x = np.concatenate([r.batch.x for r in records])
    y = np.concatenate([r.batch.y for r in records])
    event_type = np.concatenate([r.batch.event_type for r in records]).astype(np.int64)
    hour_s = np.concatenate([r.batch.timestamp_ms for r in records]) // MS_PER_HOUR * 3600
    record_of_event = np.repeat(np.arange(len(records)), lengths)
    partitions = np.fromiter((r.partition for r in records), np.int64, len(records))
    offsets = np.fromiter((r.offset for r in records), np.int64, len(records))

    screen_names, screen_rank = screens.sorted()
    campaign_ids, campaign_rank = campaigns.sorted()
    user_ids, user_rank = users.sorted()
    screen, campaign, user_of_record = (
        screen_rank[screen],
        campaign_rank[campaign],
        user_rank[user_of_record],
    )
    hours, hour_code = _distinct_hours(hour_s)
    hour_month = yyyymm(hours)
    # Hours are sorted, so months are too: the month's rank leads the grouping
    # key, and each month's rows come out as one contiguous slice (no copies).
    months, month_of_hour = np.unique(hour_month, return_inverse=True)
    month_code = month_of_hour.astype(np.int64)[hour_code] if len(months) > 1 else None
    cell_x, cell_y = cells(x, BASE_GRID), cells(y, BASE_GRID)
    user = user_of_record[record_of_event]
    markers = {int(p): int(offsets[partitions == p].max()) for p in np.unique(partitions)}

    keys = _SharedKeys(
        month_code,
        len(months),
        [(screen, len(screens.codes))],
        (user, len(users.codes)),
        [(campaign, len(campaigns.codes)), (event_type, 4), (hour_code, len(hours))],
        cell_x,
        cell_y,
    )
    blocks: list[Block] = []
    for spec in tables:
        keep = _not_yet_stored(
            spec.name, watermarks, partitions, offsets, record_of_event, hour_code, hour_month
        )
        if keep is not None and not keep.any():
            continue
        grouped = keys.group(spec, keep)
        if month_code is None:  # the usual case: one month
            parts = [(int(months[0]), grouped)]
        else:
            row_month = grouped.field(0)
            bounds = np.searchsorted(row_month, np.arange(len(months) + 1))
            parts = [
                (int(months[m]), grouped.rows(a, b, drop_first=True))
                for m, (a, b) in enumerate(itertools.pairwise(bounds.tolist()))
                if b > a
            ]
        for month, month_rows in parts:
            blocks.append(
                _block(
                    spec,
                    month,
                    month_rows,
                    hours,
                    markers,
                    topic,
                    screen_names,
                    campaign_ids,
                    user_ids,
                )
            )
    return blocks


def _not_yet_stored(
    table: str,
    watermarks: Watermarks,
    partitions: IntArray,
    offsets: IntArray,
    record_of_event: IntArray,
    hour_code: IntArray,
    hour_month: IntArray,
) -> npt.NDArray[np.bool_] | None:
    """Mask of events not yet in ``table``, or None when all of them are new (the usual case)."""
    lowest = int(offsets.min())
    wanted = set(partitions.tolist())
    if all(o < lowest for (t, p, _), o in watermarks.items() if t == table and p in wanted):
        return None
    month_of_event = hour_month[hour_code]
    pair = partitions[record_of_event] * 1_000_000 + month_of_event
    pairs, pair_index = np.unique(pair, return_inverse=True)
    hwm = np.array(
        [watermarks.get((table, int(p) // 1_000_000, int(p) % 1_000_000), -1) for p in pairs],
        dtype=np.int64,
    )
    keep: npt.NDArray[np.bool_] = offsets[record_of_event] > hwm[pair_index]
    return keep


def _column(
    head: IntArray,
    rows: _Rows | None,
    field: int,
    dtype: np.dtype[Any] | type[np.generic],
    size: int,
    lut: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """The marker rows' ``head``, then field ``field`` of ``rows`` (or zeros), in one
    array of ``dtype``: the field is unpacked into it, no intermediate copy."""
    n = len(head)
    out = np.empty(size, dtype=dtype) if rows is not None else np.zeros(size, dtype=dtype)
    out[:n] = head
    if rows is not None:
        rows.write(field, out[n:], lut)
    return out


def _block(
    spec: TableSpec,
    month: int,
    grouped: _Rows,
    hours: IntArray,
    markers: Mapping[int, int],
    topic: str,
    screen_names: list[str],
    campaign_ids: list[str],
    user_ids: list[str],
) -> Block:
    counts = grouped.counts
    rows = len(counts)
    n_markers = len(markers)
    size = rows + n_markers
    marker_partitions = sorted(markers)
    screen_dict = [*screen_names, ""]
    campaign_dict = campaign_ids + [marker_campaign(topic, p) for p in marker_partitions]
    empty = np.full(n_markers, len(screen_names), dtype=np.int64)
    marker_campaigns = np.arange(len(campaign_ids), len(campaign_dict), dtype=np.int64)
    zeros = np.zeros(n_markers, dtype=np.int64)
    # Marker rows first: screen_name '' sorts before every screen (ORDER BY order).
    screen_codes = _column(empty, grouped, 0, index_dtype(len(screen_dict)), size)
    columns: list[tuple[str, str, Column]] = [
        ("screen_name", LC, LowCardinalityColumn(screen_dict, screen_codes)),
    ]
    field = 1
    if spec.per_user:
        user_dict = [*user_ids, ""]
        marker_users = np.full(n_markers, len(user_ids), dtype=np.int64)
        user_codes = _column(marker_users, grouped, field, index_dtype(len(user_dict)), size)
        columns.append(("user_id", LC, LowCardinalityColumn(user_dict, user_codes)))
        field += 1
    campaign_codes = _column(
        marker_campaigns, grouped, field, index_dtype(len(campaign_dict)), size
    )
    columns.append(("campaign_id", LC, LowCardinalityColumn(campaign_dict, campaign_codes)))
    marker_hour = np.full(n_markers, month_start(month), dtype=np.int64)
    marker_offsets = np.array([markers[p] for p in marker_partitions], dtype=np.int64)
    hour_lut = hours.astype(NUMPY_TYPES["UInt32"])
    for name, ch_type, head, source, lut in (
        ("event_type", "UInt8", zeros, field + 1, None),
        ("hour", "UInt32", marker_hour, field + 2, hour_lut),
        ("cell_x", spec.cell_type, zeros, field + 3, None),
        ("cell_y", spec.cell_type, zeros, field + 4, None),
    ):
        values = _column(head, grouped, source, NUMPY_TYPES[ch_type], size, lut)
        columns.append((name, ch_type, NumberColumn(values)))
    events = np.zeros(size, dtype=NUMPY_TYPES["UInt64"])
    events[n_markers:] = counts
    columns.append(("events", "UInt64", NumberColumn(events)))
    offsets = _column(marker_offsets, None, 0, NUMPY_TYPES["Int64"], size)
    columns.append(("source_offset", "Int64", NumberColumn(offsets)))
    return Block(
        table=spec.name,
        month=month,
        rows=rows,
        events=int(counts.sum()),
        markers=dict(markers),
        column_names=tuple(name for name, _, _ in columns),
        column_types=tuple(ch for _, ch, _ in columns),
        payload=encode_block(columns, size),
    )


__all__ = [
    "TABLES",
    "TABLE_NAMES",
    "Block",
    "NumberColumn",
    "Record",
    "TableSpec",
    "Watermarks",
    "aggregate",
    "cells",
    "marker_campaign",
    "month_start",
    "yyyymm",
]
