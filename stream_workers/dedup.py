"""Client batch-id deduplication, in memory bounded by settings whatever the batch rate.

The rule: a batch is a duplicate iff the same (user_id, batch_id) was seen at
a LOWER offset of the same partition (within the ledger table's 7-day TTL).
The ledger rows of a flush are inserted before its cells, so after a crash
between the two inserts the replayed batch finds itself at the same offset
and is counted (once). Kafka keys messages by user, so every retry of a batch
lands on the partition of its first copy.

What the worker holds, per process:

* ``recent``: the exact first offset of at most ``capacity`` keys, least
  recently used evicted (device retries come within seconds or minutes);
* ``pending``: keys recorded by flushes whose ledger rows are not stored yet
  (never evicted, else a retry right behind its first copy could be missed;
  at most the two batches the agent has in flight);
* a Bloom filter of fixed size over every key of the loaded partitions'
  ledger in ClickHouse plus every key recorded since. A key in neither map
  and not in the filter is certainly new; a filter hit (an old retry or a
  false positive) is looked up in ClickHouse, batched per chunk.

More keys than the filter was sized for only raise its false-positive rate
(more look-ups), never the memory, and never change a count.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

Key = tuple[int, str, str]  # (partition, user_id, batch_id)

FILTER_PROBES = 4
_MASK64 = (1 << 64) - 1


def key_hash(key: Key) -> int:
    """64-bit hash of a key, the same as ``FILTER_HASH_SQL`` computes in ClickHouse."""
    partition, user_id, batch_id = key
    digest = hashlib.md5(f"{partition}\0{user_id}\0{batch_id}".encode(), usedforsecurity=False)
    return int.from_bytes(digest.digest()[:8], "little")


# ``reinterpretAsUInt64`` reads the first 8 bytes of the MD5 little-endian, like ``key_hash``.
FILTER_HASH_SQL = (
    "reinterpretAsUInt64(MD5(concat(toString(kafka_partition), '\\0', user_id, '\\0', batch_id)))"
)


def filter_bits(filter_bytes: int) -> int:
    """Bits of the filter: the largest power of two that fits (positions are masked, not mod)."""
    bits = max(filter_bytes, 8) * 8
    return 1 << (bits.bit_length() - 1)


def probe_positions_sql(bits: int, h: str = "h") -> str:
    """Array of the filter positions of hash column ``h`` (ClickHouse, UInt64 wraps like ``h``).

    ``h`` names a column (computed once per row), not the hash expression:
    inside the lambda the expression would be evaluated once per probe.
    """
    return (
        f"arrayMap(i -> bitAnd({h} + toUInt64(i) * bitOr(bitShiftRight({h}, 29), 1), "
        f"toUInt64({bits - 1})), range({FILTER_PROBES}))"
    )


def probe_positions(h: int, bits: int) -> list[int]:
    step = (h >> 29) | 1
    return [((h + i * step) & _MASK64) & (bits - 1) for i in range(FILTER_PROBES)]


class BloomFilter:
    """Bits in a ``bytearray`` (fast single-bit Python access), viewed by numpy for bulk loads."""

    def __init__(self, filter_bytes: int) -> None:
        self.bits = filter_bits(filter_bytes)
        self._bytes = bytearray(self.bits // 8)
        self.words: npt.NDArray[np.uint8] = np.frombuffer(self._bytes, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return len(self._bytes)

    def clear(self) -> None:
        self.words.fill(0)

    def add(self, h: int) -> None:
        data = self._bytes
        for pos in probe_positions(h, self.bits):
            data[pos >> 3] |= 1 << (pos & 7)

    def add_positions(self, positions: npt.NDArray[np.uint64]) -> None:
        """Set the bits at ``positions`` (one block of them, as ClickHouse streams them).

        Sorted, so that each byte is OR-ed once with all its bits
        (``reduceat``); a fancy-index ``|=`` would drop repeats of a byte.
        """
        if not len(positions):
            return
        pos = np.sort(positions.astype(np.uint64, copy=False))
        byte = pos >> np.uint64(3)
        bit = np.left_shift(np.uint8(1), (pos & np.uint64(7)).astype(np.uint8))
        starts = np.flatnonzero(np.concatenate(([True], byte[1:] != byte[:-1])))
        self.words[byte[starts].astype(np.int64)] |= np.bitwise_or.reduceat(bit, starts)

    def __contains__(self, h: int) -> bool:
        data = self._bytes
        return all(data[pos >> 3] >> (pos & 7) & 1 for pos in probe_positions(h, self.bits))


class BatchLedger:
    def __init__(self, capacity: int = 200_000, filter_bytes: int = 32 << 20) -> None:
        self.capacity = max(1, capacity)
        self._recent: OrderedDict[Key, int] = OrderedDict()
        self._pending: dict[Key, int] = {}
        self._loaded: set[int] = set()
        self._hashes: dict[Key, int] = {}  # of the chunk being admitted (see ``to_look_up``)
        self.filter = BloomFilter(filter_bytes)

    def __len__(self) -> int:
        """Exact keys held (recent + pending): at most ``capacity`` plus the batches in flight."""
        return len(self._recent) + len(self._pending)

    def loaded(self, partition: int) -> bool:
        return partition in self._loaded

    def load(self, partition: int) -> None:
        """The partition's ledger in ClickHouse is in the filter (``load_ledger_filter``)."""
        self._loaded.add(partition)

    def forget(self) -> None:
        self._recent.clear()
        self._pending.clear()
        self._loaded.clear()
        self._hashes.clear()
        self.filter.clear()

    def _known(self, key: Key) -> int | None:
        first = self._pending.get(key)
        if first is None:
            first = self._recent.get(key)
            if first is not None:
                self._recent.move_to_end(key)
        return first

    def to_look_up(self, keys: Iterable[Key]) -> list[Key]:
        """Keys whose first offset only ClickHouse can tell (filter hits not held exactly).

        Keeps the hashes it computed for the ``admit`` calls of the same chunk.
        """
        hashes = self._hashes
        hashes.clear()
        out = []
        for k in dict.fromkeys(keys):
            if k in self._pending or k in self._recent:
                continue
            h = hashes[k] = key_hash(k)
            if h in self.filter:
                out.append(k)
        return out

    def admit(self, key: Key, offset: int, found: Mapping[Key, int]) -> tuple[bool, bool]:
        """(is_duplicate, must_record) for the batch ``key`` at ``offset``.

        ``found``: the first offsets ClickHouse returned for this chunk's
        ``to_look_up`` keys (a key it did not return was never stored).
        """
        first = self._known(key)
        if first is None:
            first = found.get(key)
        if first is None or offset < first:
            self._pending[key] = offset
            h = self._hashes.get(key)
            self.filter.add(key_hash(key) if h is None else h)
            return False, True
        if first == offset:
            self._remember(key, first)
            return False, False  # a replay of the first copy itself
        self._remember(key, first)
        return True, False

    def stored(self, keys: Iterable[Key]) -> None:
        """The ledger rows of ``keys`` are in ClickHouse: they may be evicted from now on."""
        for key in keys:
            offset = self._pending.pop(key, None)
            if offset is not None:
                self._remember(key, offset)

    def _remember(self, key: Key, first: int) -> None:
        if key in self._pending:
            return
        recent = self._recent
        recent[key] = min(first, recent.get(key, first))
        recent.move_to_end(key)
        while len(recent) > self.capacity:
            recent.popitem(last=False)
