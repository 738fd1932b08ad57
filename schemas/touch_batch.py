"""Encode and decode the Kafka touch-batch message (``schemas/kafka/v1/touch_batch.proto``).

The gateway encodes one ``TouchBatch`` per accepted request; workers decode
it straight into numpy columns (``np.array`` over a packed repeated field is a
memory copy, not a Python loop). ``decode_batch`` re-checks every invariant
the gateway promises, with the limits of ``schemas.event_rules`` (the same
module the gateway validates with), because bytes on a topic can come from
anywhere: a violation raises ``BatchFormatError`` and the worker dead-letters
the message. The time window checked here is the widest a gateway can be
configured with, so no batch a gateway acknowledged is ever dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from schemas.event_rules import (
    COORDINATE_MAX,
    COORDINATE_MIN,
    EVENT_TYPES,
    MAX_BATCH_ID,
    MAX_CAMPAIGN_ID,
    MAX_EVENT_AGE_LIMIT_S,
    MAX_EVENTS,
    MAX_RECEIVED_AT_MS,
    MAX_SCREEN_NAME,
    MAX_USER_ID,
    MIN_RECEIVED_AT_MS,
    TimeWindow,
)
from schemas.kafka.v1 import touch_batch_pb2

FORMAT_VERSION = 1


class BatchFormatError(ValueError):
    """The bytes are not a valid TouchBatch of a version this code reads."""


@dataclass(frozen=True)
class TouchBatch:
    """One request's events, column by column (all columns have one entry per event)."""

    user_id: str
    batch_id: str
    client_batch_id: bool
    received_at_ms: int
    screen_dict: Sequence[str]
    screen_index: npt.NDArray[np.uint32]
    campaign_dict: Sequence[str]
    campaign_index: npt.NDArray[np.uint32]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    timestamp_ms: npt.NDArray[np.int64]
    event_type: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def encode_batch(batch: TouchBatch) -> bytes:
    message = touch_batch_pb2.TouchBatch(
        format_version=FORMAT_VERSION,
        user_id=batch.user_id,
        batch_id=batch.batch_id,
        client_batch_id=batch.client_batch_id,
        received_at_ms=batch.received_at_ms,
        screen_dict=batch.screen_dict,
        screen_index=batch.screen_index.tolist(),
        campaign_dict=batch.campaign_dict,
        campaign_index=batch.campaign_index.tolist(),
        x=batch.x.tolist(),
        y=batch.y.tolist(),
        timestamp_ms=batch.timestamp_ms.tolist(),
        event_type=batch.event_type.tolist(),
    )
    return message.SerializeToString()


def decode_batch(data: bytes) -> TouchBatch:
    try:
        message = touch_batch_pb2.TouchBatch.FromString(data)
    except DecodeError as e:
        raise BatchFormatError(f"undecodable protobuf: {e}") from e
    if message.format_version != FORMAT_VERSION:
        raise BatchFormatError(f"unknown format_version {message.format_version}")
    if not 0 < len(message.user_id) <= MAX_USER_ID:
        raise BatchFormatError(f"user_id empty or over {MAX_USER_ID} characters")
    if not 0 < len(message.batch_id) <= MAX_BATCH_ID:
        raise BatchFormatError(f"batch_id empty or over {MAX_BATCH_ID} characters")
    if not MIN_RECEIVED_AT_MS <= message.received_at_ms <= MAX_RECEIVED_AT_MS:
        raise BatchFormatError(f"received_at_ms {message.received_at_ms} is not a gateway's")
    n = len(message.x)
    if not 0 < n <= MAX_EVENTS:
        raise BatchFormatError(f"{n} events; 1..{MAX_EVENTS} expected")
    batch = TouchBatch(
        user_id=message.user_id,
        batch_id=message.batch_id,
        client_batch_id=message.client_batch_id,
        received_at_ms=message.received_at_ms,
        screen_dict=list(message.screen_dict),
        screen_index=np.array(message.screen_index, dtype=np.uint32),
        campaign_dict=list(message.campaign_dict),
        campaign_index=np.array(message.campaign_index, dtype=np.uint32),
        x=np.array(message.x, dtype=np.float32),
        y=np.array(message.y, dtype=np.float32),
        timestamp_ms=np.array(message.timestamp_ms, dtype=np.int64),
        event_type=np.array(message.event_type, dtype=np.int64).astype(np.uint8),
    )
    _check(batch, message, n)
    return batch


def _check(batch: TouchBatch, message: touch_batch_pb2.TouchBatch, n: int) -> None:
    columns = {
        "screen_index": len(message.screen_index),
        "campaign_index": len(message.campaign_index),
        "y": len(message.y),
        "timestamp_ms": len(message.timestamp_ms),
        "event_type": len(message.event_type),
    }
    uneven = [name for name, length in columns.items() if length != n]
    if uneven:
        raise BatchFormatError(f"column length differs from x ({n}): {', '.join(uneven)}")
    if not batch.screen_dict or int(batch.screen_index.max()) >= len(batch.screen_dict):
        raise BatchFormatError("screen_index out of screen_dict")
    if not all(0 < len(s) <= MAX_SCREEN_NAME for s in batch.screen_dict):
        raise BatchFormatError(f"screen name empty or over {MAX_SCREEN_NAME} characters")
    if not batch.campaign_dict or int(batch.campaign_index.max()) >= len(batch.campaign_dict):
        raise BatchFormatError("campaign_index out of campaign_dict")
    if any(len(c) > MAX_CAMPAIGN_ID for c in batch.campaign_dict):
        raise BatchFormatError(f"campaign id over {MAX_CAMPAIGN_ID} characters")
    for name, column in (("x", batch.x), ("y", batch.y)):
        # NaN fails both comparisons, so this also rejects NaN and inf.
        if not bool(np.all((column >= COORDINATE_MIN) & (column <= COORDINATE_MAX))):
            raise BatchFormatError(f"{name} outside [0, 1] or not finite")
    raw_types = np.array(message.event_type, dtype=np.int64)
    if not bool(np.all((raw_types >= EVENT_TYPES[0]) & (raw_types <= EVENT_TYPES[-1]))):
        raise BatchFormatError("event_type outside TAP/SCROLL/ACTION_CLICK")
    window = TimeWindow(batch.received_at_ms, MAX_EVENT_AGE_LIMIT_S)
    earliest, latest = int(batch.timestamp_ms.min()), int(batch.timestamp_ms.max())
    if earliest < window.earliest_ms or latest > window.latest_ms:
        raise BatchFormatError(
            f"timestamp outside [{window.earliest_ms}, {window.latest_ms}] ms "
            f"(received_at_ms {batch.received_at_ms})"
        )
