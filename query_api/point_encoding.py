"""Heatmap answers as protobuf bytes, written from numpy columns.

An answer of a 512 grid is up to 262,144 ``HeatmapDataPoint`` messages:
building them one by one in Python, or even parsing numpy-written bytes into
a message for gRPC to serialize again, cost more than the SQL (issue 16:
~190 of 260 ms). Here the points are written straight from the result
columns, byte for byte what protobuf's serializer writes for the same
message (``tests/unit/test_point_encoding.py`` and
``tests/unit/test_point_encoding_per_user.py`` check that against
``SerializeToString`` over random answers), and ``EncodedReply`` carries
them to the transport as they are.

One ALL_USERS point on the wire (field 1 of ``QueryHeatmapDataResponse``):

    0x0A len | 0x0D x:float32le | 0x15 y:float32le | 0x18 count:varint
             | [0xC0 0x02 unique_users:varint]

``len`` is at most 33 (one byte); proto3 leaves out a field at its default,
so ``unique_users`` is absent where it is 0 (x, y are cell centres and the
count is positive: never 0). A serializer writes a message's fields in
field-number order, so the response is the points followed by the other
fields (``QueryHeatmapDataResponse`` without points, serialized by protobuf).

ALL_USERS cells are aggregated in a dense array of the grid's ``grid * grid``
cells (at most 262,144): the statement's unordered rows land at their key,
the unique users at theirs, and the non-empty cells come out in key order
(row-major: y, then x) without a sort or a join. Points whose varints fit a
few machine words (counts below 2**56, unique users below 2**42: every
realistic answer) are composed as little-endian uint64 words, whole columns
at a time; wider ones go byte column by byte column.

PER_USER answers (``encode_per_user``) add ``user_id`` (field 4) to each point
and the ``user_touch_counts`` (field 2) after them: users are ranked by their
touches (most first, then by id), points follow their user's rank, then y,
then x. User ids are dictionary-encoded once (pyarrow: no Python object per
row); a record is a row of a byte matrix joined from blocks (its fixed fields,
its varints, its user's tag, length and UTF-8 bytes), one block copy per
distinct varint width, and the rows are cut at their lengths in one masked copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from schemas.heatmap.v1 import heatmap_pb2

# The key of the unique-users row that carries the distinct users over all cells.
TOTAL_USERS_KEY = -1
_MAX_VARINT = 10
_SHIFTS = np.arange(_MAX_VARINT, dtype=np.uint64) * np.uint64(7)
# A value needs k + 1 7-bit groups when it is at least the k-th of 2**7, 2**14, ... 2**63.
_LIMITS = np.left_shift(np.uint64(1), _SHIFTS[1:])
_HEAD = 13  # 0x0A len 0x0D x 0x15 y 0x18: the bytes before the count
_USERS_TAG = (0xC0, 0x02)  # field 40, varint: (40 << 3 | 0) as a varint
# Word-composed points: a count varint of at most 8 bytes (one uint64), the
# unique-users field (tag + varint) of at most 8 bytes (a varint of 6).
_WORD_COUNT_WIDTH = 8
_WORD_USERS_WIDTH = 6
# PER_USER records are written in row chunks of about this many matrix bytes.
_CHUNK_BYTES = 1 << 22

_U8 = np.uint64(8)


class EncodedReply:
    """A ``QueryHeatmapDataResponse`` ready for the wire: its repeated fields as
    bytes (points, then user touch counts) and the message of its other fields.

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
        self.head = head
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


def _packed_varints(
    values: npt.NDArray[np.uint64], width: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Varints of at most 8 bytes as one little-endian uint64 each (first byte lowest),
    and their byte counts; ``width`` (<= 8) must hold the largest."""
    length = np.ones(values.shape[0], dtype=np.uint64)
    for k in range(1, width):
        length += values >= _LIMITS[k - 1]
    packed = values & np.uint64(0x7F)
    for k in range(1, width):
        # Groups past a value's end are 0 and carry no continuation bit.
        more = (length > k).astype(np.uint64) << np.uint64(8 * k - 1)
        packed |= more | (((values >> _SHIFTS[k]) & np.uint64(0x7F)) << np.uint64(8 * k))
    return packed, length


def _compact(rows: npt.NDArray[np.uint8], length: npt.NDArray[Any]) -> bytes:
    """Each row's first ``length`` bytes, concatenated."""
    width = rows.shape[1]
    low, high = int(length.min()), int(length.max())
    if low == high:  # every row as long: a slice, no mask
        return np.ascontiguousarray(rows[:, :low]).tobytes()
    # Row r of `used` marks a row's first r bytes (take: ~10x faster than indexing).
    used = np.arange(width)[None, :] < np.arange(width + 1)[:, None]
    return rows[np.take(used, length.astype(np.intp), axis=0)].tobytes()


def _encode_points_words(
    centres: npt.NDArray[np.uint32],
    grid: int,
    keys: npt.NDArray[np.intp],
    counts: npt.NDArray[np.uint64],
    count_width: int,
    users: npt.NDArray[np.uint64] | None,
    user_width: int,
) -> bytes:
    """``encode_points`` for counts of at most 8 varint bytes and users of at most 6:
    each point as little-endian uint64 words (bytes 0-7, 8-15, ...), built a
    column of points at a time."""
    n = keys.shape[0]
    count_packed, count_len = _packed_varints(counts, count_width)
    length = count_len + np.uint64(11)  # after the length byte: x, y (5 each), count tag
    users_packed = users_len = None
    if users is not None:
        packed, ulen = _packed_varints(users, user_width)
        present = users > 0
        users_len = np.where(present, ulen + np.uint64(2), np.uint64(0))
        users_packed = np.where(present, (packed << np.uint64(16)) | np.uint64(0x02C0), 0)
        length += users_len
    width = _HEAD + count_width + (2 + user_width if users is not None else 0)
    words = np.zeros((n, (width + 7) // 8), dtype="<u8")
    x = np.take(centres, keys & (grid - 1)).astype(np.uint64)
    y = np.take(centres, keys >> (grid.bit_length() - 1)).astype(np.uint64)
    words[:, 0] = (
        np.uint64(0x0A)
        | (length << _U8)
        | np.uint64(0x0D << 16)
        | (x << np.uint64(24))
        | np.uint64(0x15 << 56)
    )
    # The count varint starts at byte 13: bit 40 of word 1.
    words[:, 1] = y | np.uint64(0x18 << 32) | (count_packed << np.uint64(40))
    if words.shape[1] > 2:
        words[:, 2] = count_packed >> np.uint64(24)
    if users_packed is not None:
        # The users field follows each count's last byte: byte 13 + count length.
        start = (count_len + np.uint64(_HEAD)) * _U8
        word, shift = start >> np.uint64(6), start & np.uint64(63)
        low = users_packed << shift
        # numpy shifts by >= 64 give 0: no carry into the next word when shift is 0.
        high = users_packed >> (np.uint64(64) - shift)
        for w in np.unique(word).tolist():
            at = word == w
            words[:, w] |= np.where(at, low, 0)
            if w + 1 < words.shape[1]:
                words[:, w + 1] |= np.where(at, high, 0)
    rows = words.view(np.uint8)
    return _compact(rows, length + np.uint64(2))


def _encode_points_bytes(
    centres: npt.NDArray[np.uint32],
    grid: int,
    keys: npt.NDArray[np.intp],
    counts: npt.NDArray[np.uint64],
    count_width: int,
    users: npt.NDArray[np.uint64] | None,
) -> bytes:
    """``encode_points`` for any int64 values: a byte matrix, one column at a time."""
    n = keys.shape[0]
    count_octets, count_len = varints(counts, count_width)
    users_part = 0
    if users is not None:
        user_width = _width(int(users.max()))
        user_octets, user_len = varints(users, user_width)
        present = users > 0
        user_len = np.where(present, user_len + len(_USERS_TAG), 0)
        users_part = len(_USERS_TAG) + user_width
    width = _HEAD + count_width + users_part
    rows = np.empty((n, width), dtype=np.uint8)
    rows[:, 0] = 0x0A
    rows[:, 2] = 0x0D
    rows[:, 3:7] = np.take(centres, keys & (grid - 1)).view(np.uint8).reshape(n, 4)
    rows[:, 7] = 0x15
    rows[:, 8:12] = np.take(centres, keys >> (grid.bit_length() - 1)).view(np.uint8).reshape(n, 4)
    rows[:, 12] = 0x18
    tail = rows[:, _HEAD:]
    tail[:, :count_width] = count_octets
    length = count_len
    if users is not None:
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
    return _compact(rows, _HEAD + length)


def _centres(grid: int) -> npt.NDArray[np.uint32]:
    """The float32 bits of each column's (and row's) centre, (i + 0.5) / grid."""
    centres: npt.NDArray[np.uint32] = (
        ((np.arange(grid, dtype=np.float64) + 0.5) / grid).astype("<f4").view("<u4")
    )
    return centres


def encode_points(
    grid: int,
    keys: npt.NDArray[np.intp],
    counts: npt.NDArray[np.uint64],
    users: npt.NDArray[np.uint64] | None = None,
    *,
    words: bool = True,
) -> bytes:
    """The serialized ``data_points`` entries of the given cells, in the order given.

    ``keys``: row-major cell keys (iy * grid + ix); ``counts``: positive;
    ``users``: unique users per cell (field 40), or None to leave it out.
    ``words=False`` forces the byte-matrix writer (tests compare the two).
    """
    n = keys.shape[0]
    if n == 0:
        return b""
    centres = _centres(grid)
    count_width = _width(int(counts.max()))
    if users is not None and not users.any():
        users = None
    user_width = _width(int(users.max())) if users is not None else 0
    if words and count_width <= _WORD_COUNT_WIDTH and user_width <= _WORD_USERS_WIDTH:
        return _encode_points_words(centres, grid, keys, counts, count_width, users, user_width)
    return _encode_points_bytes(centres, grid, keys, counts, count_width, users)


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


# ------------------------------------------------------------------ PER_USER


def _strings(
    values: Any,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.int64], Any, Any]:
    """The distinct strings of ``values`` (a str sequence, or a pyarrow string or
    binary array): each value's index among them, each one's start and length
    in the UTF-8 byte pool, the pyarrow array of them and the pool."""
    array = values
    if not isinstance(array, pa.Array | pa.ChunkedArray):
        array = pa.array(values, pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    encoded = pc.dictionary_encode(array)
    codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    distinct = encoded.dictionary.cast(pa.large_binary())
    _, offset_buffer, data = distinct.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)
    offsets = offsets[distinct.offset : distinct.offset + len(distinct) + 1]
    pool = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return codes, offsets[:-1], np.diff(offsets), distinct, pool


def _tagged_varints(
    tag: int, values: npt.NDArray[np.uint64], present: npt.NDArray[np.bool_] | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Rows of ``tag`` then each value's varint, and their lengths (0 where not
    ``present``: proto3 leaves a field at its default out)."""
    width = _width(int(values.max()))
    octets, length = varints(values, width)
    rows = np.empty((values.shape[0], width + 1), dtype=np.uint8)
    rows[:, 0] = tag
    rows[:, 1:] = octets
    lengths = length.astype(np.int64) + 1
    return rows, lengths if present is None else np.where(present, lengths, 0)


class _Names:
    """User ids as string fields (tag, length, UTF-8 bytes) in rows of a matrix."""

    def __init__(
        self,
        pool: npt.NDArray[np.uint8],
        starts: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
    ) -> None:
        self._pool = np.concatenate([pool, np.zeros(int(lengths.max()) + 1, dtype=np.uint8)])
        self._starts = starts
        self._lengths = lengths
        self._fields: dict[int, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = {}
        # Padded to the longest id once per user when that is small (the usual
        # case), else per chunk of rows: one long id among many users must not
        # make a users x longest matrix.
        self._per_user = lengths.shape[0] * (int(lengths.max()) + 3) <= _CHUNK_BYTES * 4

    def field(
        self, tag: int, users: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """Rows of field ``tag`` for the given users (none for an empty id: proto3
        leaves it out), and their lengths."""
        if not self._per_user:
            return self._build(tag, users)
        if tag not in self._fields:
            self._fields[tag] = self._build(tag, np.arange(self._lengths.shape[0]))
        rows, lengths = self._fields[tag]
        return rows[users], lengths[users]

    def _build(
        self, tag: int, users: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        lengths = self._lengths[users]
        width = max(1, int(lengths.max()))
        text = self._pool[self._starts[users][:, None] + np.arange(width)[None, :]]
        head = _tagged_varints(tag, lengths.astype(np.uint64), lengths > 0)
        return _join(*head, text, lengths)


def _join(
    left: npt.NDArray[np.uint8],
    left_len: npt.NDArray[np.int64],
    right: npt.NDArray[np.uint8],
    right_len: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Row i: ``left[i, :left_len[i]]`` then ``right[i, :right_len[i]]``, and the
    lengths (bytes past a row's length are arbitrary). One block copy per
    distinct left length: there are a few (varint widths)."""
    high = int(left_len.max())
    out = np.empty((left.shape[0], high + right.shape[1]), dtype=np.uint8)
    out[:, :high] = left[:, :high]
    starts = np.flatnonzero(np.bincount(left_len)).tolist()
    if len(starts) == 1:
        out[:, starts[0] : starts[0] + right.shape[1]] = right
    else:
        for a in starts:
            at = np.flatnonzero(left_len == a)
            out[at, a : a + right.shape[1]] = right[at]
    return out, left_len + right_len


def _framed(tag: int, body: npt.NDArray[np.uint8], body_len: npt.NDArray[np.int64]) -> bytes:
    """Length-delimited entries of field ``tag`` around each row's body."""
    head, head_len = _tagged_varints(tag, body_len.astype(np.uint64))
    return _compact(*_join(head, head_len, body, body_len))


def _chunks(n: int, width: int) -> list[slice]:
    """Row ranges whose matrices stay about ``_CHUNK_BYTES`` (long user ids widen rows)."""
    step = max(1024, _CHUNK_BYTES // width)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def encode_per_user(
    grid: int,
    users: Any,
    gxs: Any,
    gys: Any,
    counts: Any,
    ranking_totals: tuple[int, int] | None = None,
) -> EncodedReply:
    """The PER_USER answer from the rows (user_id, gx, gy, count > 0) of its
    statement, in any order.

    Points by user rank (most touches first, ties by user id in Python's str
    order), then y, then x; ``user_touch_counts`` in rank order.
    ``ranking_totals``: (total_users, total_touches) of the top_users ranking
    the rows were read for; without it they are those of the rows.
    """
    head = heatmap_pb2.QueryHeatmapDataResponse(grid_size=grid)
    if ranking_totals is not None:
        head.total_users, head.total_touches = ranking_totals
    counts = np.asarray(counts, dtype=np.uint64)
    n = counts.shape[0]
    if n == 0:
        return EncodedReply(head)
    codes, user_start, user_len, distinct, pool = _strings(users)
    m = user_len.shape[0]
    totals = np.zeros(m, dtype=np.uint64)
    np.add.at(totals, codes, counts)
    # UTF-8 byte order is code point order: pyarrow's binary sort is Python's str sort.
    table = pa.table({"t": totals, "u": distinct})
    ranked = np.asarray(
        pc.sort_indices(table, sort_keys=[("t", "descending"), ("u", "ascending")]).to_numpy(),
        dtype=np.intp,
    )
    rank = np.empty(m, dtype=np.int64)
    rank[ranked] = np.arange(m)
    cell = np.asarray(gys, dtype=np.int64) * grid + np.asarray(gxs, dtype=np.int64)
    # (user, cell) pairs are distinct: one int64 key orders them by (rank, y, x).
    order = np.argsort(rank[codes] * (grid * grid) + cell)
    owner = codes[order]
    keys = cell[order]
    point_counts = counts[order]

    centres = _centres(grid)
    width = int(user_len.max()) + 32  # a record's widest row: its id and the rest
    names = _Names(pool, user_start, user_len)
    parts = []
    for rows in _chunks(n, width):
        k = keys[rows]
        body = np.empty((k.shape[0], 10), dtype=np.uint8)  # 0x0D x 0x15 y
        body[:, 0] = 0x0D
        body[:, 1:5] = np.take(centres, k & (grid - 1)).view(np.uint8).reshape(-1, 4)
        body[:, 5] = 0x15
        body[:, 6:10] = np.take(centres, k >> (grid.bit_length() - 1)).view(np.uint8).reshape(-1, 4)
        count_rows, count_len = _tagged_varints(0x18, point_counts[rows])
        body = np.concatenate([body, count_rows], axis=1)
        point = _join(body, count_len + 10, *names.field(0x22, owner[rows]))
        parts.append(_framed(0x0A, *point))
    ranked_totals = totals[ranked]
    for rows in _chunks(m, width):
        touches = ranked_totals[rows]
        tally = _join(
            *names.field(0x0A, ranked[rows]), *_tagged_varints(0x10, touches, touches > 0)
        )
        parts.append(_framed(0x12, *tally))

    total = int(totals.sum())
    head.total_count = total
    if ranking_totals is None:
        head.total_users, head.total_touches = m, total
    return EncodedReply(head, b"".join(parts), n, (grid, keys, point_counts))
