"""The suppression list as a worker applies it: which user's events a record still counts.

A version (``user_suppressions.seq``) comes into force for a partition above
the offset of its *cut* (``suppression_cuts``), which the partition's owner
writes before it stores any record decided under that version. Whether the
events of user ``u`` in the record at offset ``o`` of partition ``p`` count
depends only on those stored rows: the latest version of ``u`` whose cut for
``p`` is below ``o`` decides (erase: not counted). So every replay of a record,
by any worker, decides it the same way in every table, and an erasure that
waited until every partition's cut is committed knows that the per-user table
holds exactly the user's events that the all-users tables hold
(docs/privacy.md, "Erasure protocol").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

ERASE = 1
UNERASE = 0


@dataclass(frozen=True)
class SuppressionRow:
    seq: int
    user_id: str
    action: int


@dataclass
class Suppressions:
    """Every version up to ``version``, and the cuts known for each loaded partition."""

    version: int = 0
    history: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    cuts: dict[int, dict[int, int]] = field(default_factory=dict)

    def add(self, rows: Iterable[SuppressionRow]) -> None:
        for row in sorted(rows, key=lambda r: r.seq):
            if row.seq <= self.version:
                continue
            self.history.setdefault(row.user_id, []).append((row.seq, row.action))
            self.version = row.seq

    def versions(self) -> list[int]:
        return sorted({seq for h in self.history.values() for seq, _ in h})

    def set_cuts(self, cuts: Mapping[tuple[int, int], int]) -> None:
        """``(partition, seq) -> cut`` as stored (the first one written wins, see sink)."""
        for (partition, seq), cut in cuts.items():
            self.cuts.setdefault(partition, {})[seq] = cut

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.cuts.pop(p, None)

    def missing(self, partitions: Sequence[int]) -> list[tuple[int, int]]:
        """``(partition, seq)`` of versions without a known cut on a loaded partition."""
        versions = self.versions()
        return [(p, seq) for p in partitions for seq in versions if seq not in self.cuts.get(p, {})]

    def suppressed(self, user_id: str, partition: int, offset: int) -> bool:
        history = self.history.get(user_id)
        if not history:
            return False
        cuts = self.cuts.get(partition, {})
        for seq, action in reversed(history):
            cut = cuts.get(seq)
            if cut is None:
                # Never decide under a version whose cut is not stored: the
                # processor writes the missing cuts before deciding.
                raise RuntimeError(f"no cut for suppression version {seq} on partition {partition}")
            if offset > cut:
                return action == ERASE
        return False
