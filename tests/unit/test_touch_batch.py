"""The Kafka message codec: round trip, and every invariant a worker relies on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from heatmap_devtools.fleet import Fleet, FleetSpec
from schemas.kafka.v1 import touch_batch_pb2
from schemas.touch_batch import BatchFormatError, TouchBatch, decode_batch, encode_batch


def sample(n: int = 4) -> TouchBatch:
    return TouchBatch(
        user_id="user-1",
        batch_id="b-1",
        client_batch_id=True,
        received_at_ms=1_795_000_000_000,
        screen_dict=["Home", "Cart"],
        screen_index=np.array([0, 1, 0, 1][:n], dtype=np.uint32),
        campaign_dict=["", "spring"],
        campaign_index=np.array([0, 0, 1, 1][:n], dtype=np.uint32),
        x=np.array([0.0, 0.25, 0.5, 1.0][:n], dtype=np.float32),
        y=np.array([1.0, 0.75, 0.5, 0.0][:n], dtype=np.float32),
        timestamp_ms=np.array(
            [1_794_000_000_001, 1_794_000_000_002, 1_794_000_000_003, 1_795_000_000_000][:n],
            dtype=np.int64,
        ),
        event_type=np.array([1, 2, 3, 1][:n], dtype=np.uint8),
    )


def test_round_trip_is_exact() -> None:
    batch = sample()
    decoded = decode_batch(encode_batch(batch))
    for field in dataclasses.fields(TouchBatch):
        got, want = getattr(decoded, field.name), getattr(batch, field.name)
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
        else:
            assert list(got) == list(want) if isinstance(want, list) else got == want
    assert len(decoded) == 4


def raw(**overrides: object) -> bytes:
    message = touch_batch_pb2.TouchBatch.FromString(encode_batch(sample()))
    for name, value in overrides.items():
        field = getattr(message, name)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(message, name, value)
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xff\xff\xff", "undecodable"),
        (b"not protobuf at all \x00\x01", "undecodable|format_version"),
        (raw(format_version=2), "format_version 2"),
        (raw(format_version=0), "format_version 0"),
        (raw(user_id=""), "user_id"),
        (
            raw(x=[], y=[], timestamp_ms=[], event_type=[], screen_index=[], campaign_index=[]),
            "0 events",
        ),
        (raw(batch_id=""), "batch_id"),
        (raw(batch_id="b" * 129), "batch_id"),
        (raw(user_id="u" * 257), "user_id"),
        (raw(received_at_ms=0), "received_at_ms"),
        (raw(received_at_ms=2**62), "received_at_ms"),
        (raw(y=[0.1, 0.2]), "column length"),
        (raw(screen_index=[0, 1, 2, 0]), "screen_index"),
        (raw(screen_dict=[]), "screen_index"),
        (raw(screen_dict=["Home", ""]), "screen name"),
        (raw(screen_dict=["Home", "x" * 201]), "screen name"),
        (raw(campaign_index=[0, 0, 5, 0]), "campaign_index"),
        (raw(campaign_dict=["", "c" * 201]), "campaign id"),
        (raw(x=[0.0, 1.0001, 0.5, 0.5]), "x outside"),
        (raw(y=[0.0, float("nan"), 0.5, 0.5]), "y outside"),
        (raw(x=[0.0, float("inf"), 0.5, 0.5]), "x outside"),
        (raw(x=[-0.0001, 0.1, 0.5, 0.5]), "x outside"),
        (raw(event_type=[1, 0, 1, 1]), "event_type"),
        (raw(event_type=[1, 4, 1, 1]), "event_type"),
        (raw(timestamp_ms=[1_794_000_000_000, -5, 1_794_000_000_000, 1]), "timestamp"),
        # The widest window any gateway can be configured with: 400 days back, 24 h ahead.
        (raw(timestamp_ms=[1_795_000_000_000 - 400 * 86_400_000 - 1] * 4), "timestamp"),
        (raw(timestamp_ms=[1_795_000_000_000 + 86_400_000 + 1] * 4), "timestamp"),
        (raw(timestamp_ms=[2**62] * 4), "timestamp"),
    ],
)
def test_invalid_payloads_raise_batch_format_error(payload: bytes, reason: str) -> None:
    with pytest.raises(BatchFormatError, match=reason):
        decode_batch(payload)


def test_fleet_is_seeded_and_within_the_contract() -> None:
    first = Fleet(FleetSpec(users=50, screens=10, seed=3)).events(20_000)
    second = Fleet(FleetSpec(users=50, screens=10, seed=3)).events(20_000)
    np.testing.assert_array_equal(first.x, second.x)
    for column in (first.x, first.y):
        assert column.min() >= 0
        assert column.max() <= 1
    assert set(np.unique(first.event_type).tolist()) == {1, 2, 3}
    # Zipf: the first screen is the most visited one.
    counts = np.bincount(first.screen, minlength=10)
    assert counts.argmax() == 0
    assert counts[0] > 2 * counts[5]
    spec = FleetSpec()
    start = int(spec.first_hour.timestamp() * 1000)
    assert first.timestamp_ms.min() >= start
    assert first.timestamp_ms.max() < start + spec.hours * 3_600_000
