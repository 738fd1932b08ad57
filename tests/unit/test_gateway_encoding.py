"""ingest_gateway.encoding.encode writes exactly the bytes of schemas.touch_batch.encode_batch."""

from __future__ import annotations

import numpy as np
import pytest

from ingest_gateway.encoding import _varints, encode
from schemas.touch_batch import TouchBatch, decode_batch, encode_batch


def random_batch(rng: np.random.Generator, n: int, **overrides: object) -> TouchBatch:
    screens = [f"Screen-{i}-é" for i in range(int(rng.integers(1, 300)))]
    campaigns = ["", *[f"c{i}" for i in range(int(rng.integers(0, 5)))]]
    values: dict[str, object] = {
        "user_id": str(rng.choice(["device-1", "ü" * 40, "x" * 256])),
        "batch_id": str(rng.choice(["b", "k" * 128, "0" * 32])),
        "client_batch_id": bool(rng.integers(0, 2)),
        "received_at_ms": int(rng.integers(1, 1 << 42)),
        "screen_dict": screens,
        "screen_index": rng.integers(0, len(screens), n).astype(np.uint32),
        "campaign_dict": campaigns,
        "campaign_index": rng.integers(0, len(campaigns), n).astype(np.uint32),
        "x": rng.random(n).astype(np.float32),
        "y": rng.choice([0.0, 1.0, 0.5, 1e-30], n).astype(np.float32),
        "timestamp_ms": rng.choice([0, 1, 127, 128, 16_383, 16_384, 1 << 41, (1 << 63) - 1], n),
        "event_type": rng.integers(1, 4, n).astype(np.uint8),
    }
    values["timestamp_ms"] = np.asarray(values["timestamp_ms"], dtype=np.int64)
    values.update(overrides)
    return TouchBatch(**values)  # type: ignore[arg-type]


def test_matches_encode_batch_on_random_batches() -> None:
    rng = np.random.default_rng(11)
    for _ in range(300):
        batch = random_batch(rng, int(rng.integers(1, 501)))
        assert encode(batch) == encode_batch(batch)


def test_matches_encode_batch_on_edge_values() -> None:
    rng = np.random.default_rng(5)
    one = random_batch(
        rng,
        1,
        received_at_ms=0,
        client_batch_id=False,
        timestamp_ms=np.array([-1], dtype=np.int64),
        x=np.array([-0.0], dtype=np.float32),
    )
    assert encode(one) == encode_batch(one)
    small = random_batch(
        rng,
        3,
        screen_dict=["A"],
        screen_index=np.zeros(3, np.uint32),
        received_at_ms=1_795_000_000_000,
        timestamp_ms=np.full(3, 1_794_999_999_999, dtype=np.int64),
    )
    assert encode(small) == encode_batch(small)
    assert decode_batch(encode(small)).screen_dict == ["A"]


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 300, 16_383, 16_384, 1 << 35, (1 << 63) - 1, -1, -(1 << 63)]
)
def test_varints_match_protobuf(value: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

    want = _VarintBytes(value & ((1 << 64) - 1))
    assert _varints(np.array([value, value], dtype=np.int64)) == want * 2
