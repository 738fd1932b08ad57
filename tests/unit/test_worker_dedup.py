"""``BatchLedger``: bounded memory whatever the number of batch ids, the same verdicts."""

from __future__ import annotations

import numpy as np

from stream_workers.dedup import BatchLedger, BloomFilter, Key, key_hash, probe_positions


def admit_new(ledger: BatchLedger, keys: list[Key], first_offset: int = 0) -> None:
    for i, key in enumerate(keys):
        assert ledger.admit(key, first_offset + i, {}) == (False, True)
    ledger.stored(keys)


def test_memory_is_bounded_by_the_capacity_whatever_the_number_of_ids() -> None:
    ledger = BatchLedger(capacity=1_000, filter_bytes=1 << 16)
    keys = [(i % 3, f"user-{i % 500}", f"batch-{i}") for i in range(50_000)]
    for start in range(0, len(keys), 400):  # chunks, stored one after another
        chunk = keys[start : start + 400]
        for i, key in enumerate(chunk):
            ledger.admit(key, start + i, {})
        ledger.stored(chunk)
        assert len(ledger) <= 1_000
    assert ledger.filter.nbytes == 1 << 16  # fixed at construction


def test_a_recent_retry_is_a_duplicate_and_its_first_copy_a_replay() -> None:
    ledger = BatchLedger(capacity=1_000)
    key = (0, "u1", "b1")
    assert ledger.admit(key, 10, {}) == (False, True)
    assert ledger.admit(key, 15, {}) == (True, False)  # retry, same flush
    ledger.stored([key])
    assert ledger.admit(key, 20, {}) == (True, False)  # retry, later flush
    assert ledger.admit(key, 10, {}) == (False, False)  # the first copy replayed
    assert ledger.admit((1, "u1", "b1"), 21, {}) == (False, True)  # other partition: another key


def test_keys_not_yet_stored_are_never_evicted() -> None:
    """The pipelined next batch must see the ids of the batch still being inserted."""
    ledger = BatchLedger(capacity=1_000)
    pending = [(0, "u", f"b-{i}") for i in range(3_000)]
    for i, key in enumerate(pending):
        ledger.admit(key, i, {})
    assert len(ledger) == 3_000
    assert ledger.to_look_up(pending[:10]) == []  # held exactly: no ClickHouse look-up
    assert ledger.admit(pending[0], 5_000, {}) == (True, False)
    ledger.stored(pending)
    assert len(ledger) == 1_000


def test_an_evicted_id_is_looked_up_and_still_deduplicated() -> None:
    ledger = BatchLedger(capacity=1_000, filter_bytes=1 << 20)
    old = (0, "u-old", "b-old")
    assert ledger.admit(old, 7, {}) == (False, True)
    ledger.stored([old])
    admit_new(ledger, [(0, "u", f"b-{i}") for i in range(5_000)], first_offset=100)
    assert len(ledger) == 1_000
    assert ledger.to_look_up([old]) == [old]  # evicted, but the filter still has it
    assert ledger.admit(old, 9_000, {old: 7}) == (True, False)  # what ClickHouse answered


def test_ids_outside_the_filter_need_no_look_up() -> None:
    ledger = BatchLedger(capacity=1_000, filter_bytes=1 << 20)
    admit_new(ledger, [(0, "u", f"b-{i}") for i in range(5_000)])
    fresh = [(0, "someone", f"new-{i}") for i in range(10_000)]
    assert len(ledger.to_look_up(fresh)) < 20  # 5,000 keys in 8 Mbit: ~0 false positives


def test_positions_streamed_from_clickhouse_set_the_same_bits_as_add() -> None:
    streamed, added = BloomFilter(1 << 12), BloomFilter(1 << 12)
    hashes = [key_hash((i % 3, f"u{i}", f"b{i}")) for i in range(2_000)]
    positions = [pos for h in hashes for pos in probe_positions(h, streamed.bits)]
    # two blocks, with repeated words inside each and across them
    streamed.add_positions(np.array(positions[:5_000], dtype=np.uint64))
    streamed.add_positions(np.array(positions[3_000:], dtype=np.uint64))
    for h in hashes:
        added.add(h)
    assert np.array_equal(streamed.words, added.words)
    assert all(h in streamed for h in hashes)


def test_forget_clears_everything() -> None:
    ledger = BatchLedger(capacity=1_000)
    admit_new(ledger, [(0, "u", "b")])
    ledger.forget()
    assert len(ledger) == 0
    assert ledger.to_look_up([(0, "u", "b")]) == []
    assert not ledger.loaded(0)
