"""ALL_USERS heatmap answers as protobuf bytes, written from numpy columns.

An answer of a 512 grid is up to 262,144 ``HeatmapDataPoint`` messages:
building them one by one in Python, or even parsing numpy-written bytes into
a message for gRPC to serialize again, cost more than the SQL (issue 16:
~190 of 260 ms). Here the points are written straight from the result
columns, byte for byte what protobuf's serializer writes for the same
message (``tests/unit/test_point_encoding.py`` checks that against
``SerializeToString`` over random point sets), and ``EncodedReply`` carries
them to the transport as they are.

One point on the wire (field 1 of ``QueryHeatmapDataResponse``):

    0x0A len | 0x0D x:float32le | 0x15 y:float32le | 0x18 count:varint
             | [0xC0 0x02 unique_users:varint]

``len`` is at most 33 (one byte); proto3 leaves out a field at its default,
so ``unique_users`` is absent where it is 0 (x, y are cell centres and the
count is positive: never 0). A serializer writes a message's fields in
field-number order, so the response is the points followed by the other
fields (``QueryHeatmapDataResponse`` without points, serialized by protobuf).

Cells are aggregated in a dense array of the grid's ``grid * grid`` cells
(at most 262,144): the statement's unordered rows land at their key, the
unique users at theirs, and the non-empty cells come out in key order
(row-major: y, then x) without a sort or a join.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.heatmap.v1 import heatmap_pb2

# The key of the unique-users row that carries the distinct users over all cells.
TOTAL_USERS_KEY = -1
_MAX_VARINT = 10
_SHIFTS = np.arange(_MAX_VARINT, dtype=np.uint64) * np.uint64(7)
# A value needs k + 1 7-bit groups when it is at least the k-th of 2**7, 2**14, ... 2**63.
_LIMITS = np.left_shift(np.uint64(1), _SHIFTS[1:])
_HEAD = 13  # 0x0A len 0x0D x 0x15 y 0x18: the bytes before the count
_USERS_TAG = (0xC0, 0x02)  # field 40, varint: (40 << 3 | 0) as a varint


class EncodedReply:
    """A ``QueryHeatmapDataResponse`` ready for the wire: its points as bytes and
    the message of its other fields.

    ``SerializeToString`` is what the gRPC method's serializer and Connect's
    binary codec call; ``message`` parses it back for consumers that need
    objects (proto3 JSON, tests).
    """

    __slots__ = ("_cells", "_points", "head", "point_count")

    def __init__(
        self,
        head: heatmap_pb2.QueryHeatmapDataResponse,
        points: bytes = b"",
        point_count: int = 0,
        cells: tuple[int, npt.NDArray[np.intp], npt.NDArray[np.uint64]] | None = None,
    ) -> None:
        self.head = head  # PER_USER: the whole answer
        self._points = points
        self.point_count = point_count + len(head.data_points)
        self._cells = cells

    def SerializeToString(self) -> bytes:
        return self._points + self.head.SerializeToString()

    def message(self) -> heatmap_pb2.QueryHeatmapDataResponse:
        if not self._points:
            return self.head
        return heatmap_pb2.QueryHeatmapDataResponse.FromString(self.SerializeToString())

    def cells(self) -> tuple[Sequence[float], Sequence[float], Sequence[int]]:
        """The points' x, y and count, in answer order (for rendering)."""
        if self._cells is not None:
            grid, keys, counts = self._cells
            centres = ((np.arange(grid, dtype=np.float64) + 0.5) / grid).astype(np.float32)
            return centres[keys % grid].tolist(), centres[keys // grid].tolist(), counts.tolist()
        points = self.head.data_points
        return [p.x for p in points], [p.y for p in points], [p.count for p in points]


def serialize(reply: EncodedReply) -> bytes:
    """The gRPC response serializer of QueryHeatmapData."""
    return reply.SerializeToString()


def dense(grid: int, keys: Any, values: Any) -> npt.NDArray[np.uint64]:
    """``values`` placed at their cell keys in an array of ``grid * grid`` cells (0 elsewhere).
    Keys are distinct (a GROUP BY's)."""
    out = np.zeros(grid * grid, dtype=np.uint64)
    key_array = np.asarray(keys, dtype=np.int64)
    if key_array.shape[0]:
        out[key_array] = np.asarray(values, dtype=np.uint64)
    return out


def dense_users(grid: int, rows: Sequence[Any]) -> tuple[npt.NDArray[np.uint64], int]:
    """The unique-users rows (key, users; key ``TOTAL_USERS_KEY`` for the total) as a
    dense array of the grid's cells, and the total."""
    keys = np.asarray(rows[0] if rows else [], dtype=np.int64)
    users = np.asarray(rows[1] if rows else [], dtype=np.uint64)
    is_total = keys == TOTAL_USERS_KEY
    total = int(users[is_total].sum())
    return dense(grid, keys[~is_total], users[~is_total]), total


def varints(
    values: npt.NDArray[np.uint64], width: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.intp]]:
    """Each value as a protobuf varint, left-aligned in ``width`` columns (zero after its
    end), and the number of bytes of each. ``width`` must hold the largest."""
    groups = np.searchsorted(_LIMITS, values, side="right") + 1
    octets = np.empty((values.shape[0], width), dtype=np.uint8)
    # Column by column: 1-D operations, not an (n, width) array of uint64.
    for i in range(width):
        byte = ((values >> _SHIFTS[i]) & np.uint64(0x7F)).astype(np.uint8)
        byte |= (groups > i + 1).view(np.uint8) << np.uint8(7)
        byte *= (groups > i).view(np.uint8)
        octets[:, i] = byte
    return octets, groups


def _width(high: int) -> int:
    return max(1, (high.bit_length() + 6) // 7)


def encode_points(
    grid: int,
    keys: npt.NDArray[np.intp],
    counts: npt.NDArray[np.uint64],
    users: npt.NDArray[np.uint64] | None = None,
) -> bytes:
    """The serialized ``data_points`` entries of the given cells, in the order given.

    ``keys``: row-major cell keys (iy * grid + ix); ``counts``: positive;
    ``users``: unique users per cell (field 40), or None to leave it out.
    """
    n = keys.shape[0]
    if n == 0:
        return b""
    centres = ((np.arange(grid, dtype=np.float64) + 0.5) / grid).astype("<f4").view("<u4")
    count_width = _width(int(counts.max()))
    count_octets, count_len = varints(counts, count_width)
    with_users = users is not None and bool(users.any())
    users_part = 0
    if with_users:
        assert users is not None
        user_width = _width(int(users.max()))
        user_octets, user_len = varints(users, user_width)
        present = users > 0
        user_len = np.where(present, user_len + len(_USERS_TAG), 0)
        users_part = len(_USERS_TAG) + user_width
    width = _HEAD + count_width + users_part
    rows = np.empty((n, width), dtype=np.uint8)
    rows[:, 0] = 0x0A
    rows[:, 2] = 0x0D
    # Grids are powers of two: the cell's column and row by mask and shift.
    rows[:, 3:7] = np.take(centres, keys & (grid - 1)).view(np.uint8).reshape(n, 4)
    rows[:, 7] = 0x15
    rows[:, 8:12] = np.take(centres, keys >> (grid.bit_length() - 1)).view(np.uint8).reshape(n, 4)
    rows[:, 12] = 0x18
    tail = rows[:, _HEAD:]
    tail[:, :count_width] = count_octets
    length = count_len
    if with_users:
        tail[:, count_width:] = 0
        # The users field follows each count's own last byte: one block copy per
        # count width (at most a few distinct ones).
        block = np.empty((n, users_part), dtype=np.uint8)
        block[:, 0], block[:, 1] = _USERS_TAG
        block[:, 2:] = user_octets
        for w in np.unique(count_len).tolist():
            at = np.flatnonzero((count_len == w) & present)
            if at.shape[0]:
                tail[at, w : w + users_part] = block[at]
        length = count_len + user_len
    rows[:, 1] = (11 + length).astype(np.uint8)
    if int(length.min()) == width - _HEAD:  # every point as long as the longest: no gaps
        return rows.tobytes()
    # Row r of `used` marks a point's first r bytes (take: ~10x faster than indexing).
    used = np.arange(width)[None, :] < np.arange(width + 1)[:, None]
    return rows[np.take(used, _HEAD + length, axis=0)].tobytes()


def encode_all_users(
    grid: int,
    counts: npt.NDArray[np.uint64],
    users: npt.NDArray[np.uint64] | None = None,
    total_users: int = 0,
    min_users: int = 0,
) -> EncodedReply:
    """The ALL_USERS answer from dense per-cell counts (and unique users).

    ``min_users`` > 0: k-anonymity, cells seen by fewer users are left out
    and their touches reported as one total (``total_count`` stays the sum).
    """
    head = heatmap_pb2.QueryHeatmapDataResponse(grid_size=grid)
    total_count = int(counts.sum())
    occupied = counts > 0
    if users is not None:
        head.unique_users = total_users
    if min_users > 0:
        if users is None:
            raise ValueError("k-anonymity needs the unique users of the cells")
        hidden = occupied & (users < min_users)
        head.suppressed_count = int(counts[hidden].sum())
        head.suppressed_cells = int(np.count_nonzero(hidden))
        occupied &= ~hidden
    head.total_count = total_count
    keys = np.flatnonzero(occupied)
    kept_counts = np.take(counts, keys)
    kept_users = np.take(users, keys) if users is not None else None
    points = encode_points(grid, keys, kept_counts, kept_users)
    return EncodedReply(head, points, keys.shape[0], (grid, keys, kept_counts))
