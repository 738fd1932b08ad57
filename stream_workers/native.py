"""A minimal ClickHouse ``Native`` format block writer over numpy columns.

clickhouse-connect's own insert path converts numpy columns value by value for
some types (``DateTime`` wants Python datetimes), which costs more than the
aggregation itself. The Native format is simple for the few types the cell
tables use: a header (column count, row count), then per column its name, its
type and its data. Fixed-width numbers are the little-endian array bytes;
``String`` values are a varint length and the UTF-8 bytes; ``LowCardinality(String)``
is a dictionary plus integer indexes. ClickHouse converts between ``String``
and ``LowCardinality(String)``, and ``UInt32`` into ``DateTime``, on insert.

One ``Native`` block in one INSERT is one block on the server (the server
splits only above ``max_insert_block_size`` rows, ~1M), which is what makes a
flush's rows and its marker rows atomic (see docs/exactly-once.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

# What ``bytes.join`` takes: the columns' arrays go in as memoryviews, not copied first.
Buffer = bytes | memoryview


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _encoded(text: str) -> bytes:
    raw = text.encode("utf-8")
    return varint(len(raw)) + raw


@dataclass(frozen=True)
class StringColumn:
    """Strings as codes into a small dictionary: the join is one C-level pass."""

    dictionary: Sequence[str]
    codes: npt.NDArray[np.int64]

    def data(self) -> list[Buffer]:
        table = np.array([_encoded(s) for s in self.dictionary], dtype=object)
        return [b"".join(table[self.codes].tolist())]


@dataclass(frozen=True)
class LowCardinalityColumn:
    """``LowCardinality(String)``: the dictionary once, then one small integer per row.

    Layout (as clickhouse-connect writes it): UInt64 serialization version 1;
    UInt64 flags = index width | HasAdditionalKeys (1 << 9) | NeedUpdateDictionary
    (1 << 10); UInt64 key count and the keys as ``String``; UInt64 row count
    and the indexes. No per-row Python work at all, and ClickHouse converts it
    to a plain ``String`` column (``user_id``) in C++.
    """

    dictionary: Sequence[str]
    codes: npt.NDArray[np.int64]

    def data(self) -> list[Buffer]:
        n_keys = len(self.dictionary)
        dtype = index_dtype(n_keys)
        width = dtype.itemsize.bit_length() - 1  # 1, 2, 4 bytes -> 0, 1, 2
        head = struct.pack("<QQQ", 1, (1 << 9) | (1 << 10) | width, n_keys)
        keys = b"".join(_encoded(s) for s in self.dictionary)
        rows = struct.pack("<Q", len(self.codes))
        # Codes already in the index dtype (as the aggregator writes them) are not copied.
        return [head + keys + rows, _little(self.codes.astype(dtype, copy=False))]


@dataclass(frozen=True)
class NumberColumn:
    values: npt.NDArray[np.generic]

    def data(self) -> list[Buffer]:
        return [_little(self.values)]


def index_dtype(n_keys: int) -> np.dtype[Any]:
    """The index width of a ``LowCardinality`` column with ``n_keys`` keys."""
    return np.dtype("<u1" if n_keys <= 0xFF else "<u2" if n_keys <= 0xFFFF else "<u4")


def _little(values: npt.NDArray[Any]) -> Buffer:
    """The array's little-endian bytes, without a copy on little-endian machines:
    ``encode_block``'s join is the only copy."""
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).data.cast("B")


Column = StringColumn | LowCardinalityColumn | NumberColumn

NUMPY_TYPES: dict[str, type[np.generic]] = {
    "UInt8": np.uint8,
    "UInt16": np.uint16,
    "UInt32": np.uint32,
    "UInt64": np.uint64,
    "Int64": np.int64,
}


def encode_block(columns: Sequence[tuple[str, str, Column]], rows: int) -> bytes:
    """``columns`` are (name, ClickHouse type, column); every column has ``rows`` values."""
    parts: list[Buffer] = [varint(len(columns)), varint(rows)]
    for name, ch_type, column in columns:
        size = len(column.values) if isinstance(column, NumberColumn) else len(column.codes)
        if size != rows:
            raise ValueError(f"column {name} has {size} values, expected {rows}")
        parts += [_encoded(name), _encoded(ch_type), *column.data()]
    return b"".join(parts)
