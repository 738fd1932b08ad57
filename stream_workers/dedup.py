"""Client batch-id deduplication: the in-memory view of the ``ingest_batches`` ledger.

A batch is a duplicate iff the same (user_id, batch_id) was seen at a LOWER
offset of the same partition. The ledger rows of a flush are inserted before
its cells, so after a crash between the two inserts the replayed batch finds
itself at the same offset and is counted (once). Kafka keys messages by user,
so every retry of a batch lands on the partition of its first copy.
"""

from __future__ import annotations

from collections.abc import Mapping

Key = tuple[str, str]  # (user_id, batch_id)


class BatchLedger:
    def __init__(self) -> None:
        self._seen: dict[int, dict[Key, int]] = {}

    def loaded(self, partition: int) -> bool:
        return partition in self._seen

    def load(self, partition: int, entries: Mapping[Key, int]) -> None:
        self._seen[partition] = dict(entries)

    def forget(self) -> None:
        self._seen.clear()

    def admit(self, partition: int, offset: int, user_id: str, batch_id: str) -> tuple[bool, bool]:
        """(is_duplicate, must_record) for the batch at ``offset``."""
        seen = self._seen.setdefault(partition, {})
        key = (user_id, batch_id)
        first = seen.get(key)
        if first is None or offset < first:
            seen[key] = offset
            return False, True
        if first == offset:
            return False, False  # a replay of the first copy itself
        return True, False
