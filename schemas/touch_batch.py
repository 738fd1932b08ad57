"""Encode and decode the Kafka touch-batch message (``schemas/kafka/v1/touch_batch.proto``).

The gateway encodes one ``TouchBatch`` per accepted request; workers decode
it straight into numpy columns: ``np.frombuffer`` over the packed fields'
bytes, where converting protobuf's repeated fields element by element cost
as much as all the checks together. ``decode_batch`` re-checks every invariant
the gateway promises, with the limits of ``schemas.event_rules`` (the same
module the gateway validates with), because bytes on a topic can come from
anywhere: a violation raises ``BatchFormatError`` and the worker dead-letters
the message. The time window checked here is the widest a gateway can be
configured with, so no batch a gateway acknowledged is ever dead-lettered.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.message import DecodeError, Message

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

IntArray = npt.NDArray[np.int64]


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
    """The batch in ``data``, every invariant checked, or ``BatchFormatError``.

    The columns are read from the packed fields' bytes with ``np.frombuffer``
    (``_read_packed``) whenever that is provably what protobuf's parser would
    give; any other encoding (unknown fields, unpacked or over-long values,
    malformed bytes) goes through protobuf's parser and converts each column
    element by element (``_read_parsed``). Both feed the same checks, so the
    result, error messages included, does not depend on the path
    (``tests/unit/test_touch_batch.py`` compares them on generated wire data).
    """
    read = _read_packed(data)
    return _validated(*(read if read is not None else _read_parsed(data)))


class _Header(Protocol):
    """The scalar and string fields, as both message classes expose them."""

    @property
    def format_version(self) -> int: ...
    @property
    def user_id(self) -> str: ...
    @property
    def batch_id(self) -> str: ...
    @property
    def client_batch_id(self) -> bool: ...
    @property
    def received_at_ms(self) -> int: ...
    @property
    def screen_dict(self) -> Sequence[str]: ...
    @property
    def campaign_dict(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class _Columns:
    """The per-event fields as read, before any check (``event_type`` still unnarrowed)."""

    screen_index: npt.NDArray[np.uint32]
    campaign_index: npt.NDArray[np.uint32]
    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.float32]
    timestamp_ms: npt.NDArray[np.int64]
    event_type: npt.NDArray[np.int64] | npt.NDArray[np.uint8]


def _read_parsed(data: bytes) -> tuple[_Header, _Columns]:
    try:
        message = touch_batch_pb2.TouchBatch.FromString(data)
    except DecodeError as e:
        raise BatchFormatError(f"undecodable protobuf: {e}") from e
    return message, _Columns(
        screen_index=np.array(message.screen_index, dtype=np.uint32),
        campaign_index=np.array(message.campaign_index, dtype=np.uint32),
        x=np.array(message.x, dtype=np.float32),
        y=np.array(message.y, dtype=np.float32),
        timestamp_ms=np.array(message.timestamp_ms, dtype=np.int64),
        event_type=np.array(message.event_type, dtype=np.int64),
    )


_PACKED_COLUMNS = ("screen_index", "campaign_index", "x", "y", "timestamp_ms", "event_type")


@functools.cache
def _packed_view() -> type[Message]:
    """``TouchBatch`` with every packed column declared ``repeated bytes``.

    Same field numbers, same wire type (length-delimited): parsing yields
    each packed chunk's payload as bytes, in order. An element sent unpacked
    has another wire type and lands in the unknown fields, which
    ``_read_packed`` treats as "not provable". Derived from the generated
    descriptor, so it cannot drift from the .proto.
    """
    original = descriptor_pb2.DescriptorProto()
    touch_batch_pb2.TouchBatch.DESCRIPTOR.CopyToProto(original)
    file = descriptor_pb2.FileDescriptorProto(
        name="heatmap_internal/touch_batch_packed_view.proto",
        package="heatmap.internal",
        syntax="proto3",
    )
    view = file.message_type.add()
    view.CopyFrom(original)
    for field in view.field:
        if field.name in _PACKED_COLUMNS:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            field.ClearField("type_name")
            field.ClearField("options")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("heatmap.internal.TouchBatch")
    )


def _read_packed(data: bytes) -> tuple[_Header, _Columns] | None:
    """The columns straight from the packed bytes, or None when that is not provably
    what protobuf's parser reads (then ``_read_parsed`` decides, errors included)."""
    try:
        message: Any = _packed_view().FromString(data)
    except DecodeError:
        return None
    if len(unknown_fields.UnknownFieldSet(message)):
        return None
    x = _fixed32(message.x)
    y = _fixed32(message.y)
    # Index values of at most 4 varint bytes (< 2**28) are exact in uint32;
    # timestamps of at most 9 bytes are non-negative and exact in int64.
    screen_index = _varints(message.screen_index, 4)
    campaign_index = _varints(message.campaign_index, 4)
    timestamp_ms = _varints(message.timestamp_ms, 9)
    # One byte per event type: the int32 protobuf reads is the byte itself.
    event_type = _varints(message.event_type, 1)
    if (
        x is None
        or y is None
        or screen_index is None
        or campaign_index is None
        or timestamp_ms is None
        or event_type is None
    ):
        return None
    return message, _Columns(
        screen_index=screen_index.astype(np.uint32),
        campaign_index=campaign_index.astype(np.uint32),
        x=x,
        y=y,
        timestamp_ms=timestamp_ms.astype(np.int64, copy=False),
        event_type=event_type.astype(np.uint8, copy=False),
    )


def _joined(chunks: Sequence[bytes]) -> bytes:
    # A packed field sent in several chunks is their concatenation (protobuf's rule).
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _fixed32(chunks: Sequence[bytes]) -> npt.NDArray[np.float32] | None:
    raw = _joined(chunks)
    if len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)


def _varints(chunks: Sequence[bytes], max_bytes: int) -> npt.NDArray[np.integer[Any]] | None:
    """Packed varints of at most ``max_bytes`` bytes each, vectorised; None otherwise."""
    raw = np.frombuffer(_joined(chunks), dtype=np.uint8)
    count = int(np.count_nonzero(raw < 0x80))  # a value ends at a byte without continuation bit
    if count == len(raw):
        return raw  # every value is one byte: the byte is the value
    if not count or len(raw) % count or len(raw) // count > max_bytes:
        return _mixed_varints(raw, max_bytes)
    groups = raw.reshape(count, len(raw) // count)
    # ``count`` groups whose last bytes end values hold all ``count`` ends:
    # each group is one value (the usual case: timestamps of one era share a width).
    if not bool((groups[:, -1] < 0x80).all()):
        return _mixed_varints(raw, max_bytes)
    weights = np.left_shift(1, 7 * np.arange(groups.shape[1], dtype=np.int64))
    values: npt.NDArray[np.int64] = (groups & 0x7F).astype(np.int64) @ weights
    return values


def _mixed_varints(raw: npt.NDArray[np.uint8], max_bytes: int) -> npt.NDArray[np.int64] | None:
    if not len(raw) or raw[-1] >= 0x80:  # nothing, or a truncated last value
        return None
    ends = np.flatnonzero(raw < 0x80)
    sizes = np.diff(ends, prepend=-1)
    if int(sizes.max()) > max_bytes:
        return None
    starts = ends - sizes + 1
    position = np.arange(len(raw), dtype=np.int64) - np.repeat(starts, sizes)
    values: npt.NDArray[np.int64] = np.add.reduceat(
        (raw & 0x7F).astype(np.int64) << (7 * position), starts
    )
    return values


def _validated(message: _Header, columns: _Columns) -> TouchBatch:
    if message.format_version != FORMAT_VERSION:
        raise BatchFormatError(f"unknown format_version {message.format_version}")
    if not 0 < len(message.user_id) <= MAX_USER_ID:
        raise BatchFormatError(f"user_id empty or over {MAX_USER_ID} characters")
    if not 0 < len(message.batch_id) <= MAX_BATCH_ID:
        raise BatchFormatError(f"batch_id empty or over {MAX_BATCH_ID} characters")
    if not MIN_RECEIVED_AT_MS <= message.received_at_ms <= MAX_RECEIVED_AT_MS:
        raise BatchFormatError(f"received_at_ms {message.received_at_ms} is not a gateway's")
    n = len(columns.x)
    if not 0 < n <= MAX_EVENTS:
        raise BatchFormatError(f"{n} events; 1..{MAX_EVENTS} expected")
    lengths = {
        "screen_index": len(columns.screen_index),
        "campaign_index": len(columns.campaign_index),
        "y": len(columns.y),
        "timestamp_ms": len(columns.timestamp_ms),
        "event_type": len(columns.event_type),
    }
    uneven = [name for name, length in lengths.items() if length != n]
    if uneven:
        raise BatchFormatError(f"column length differs from x ({n}): {', '.join(uneven)}")
    screen_dict = list(message.screen_dict)
    campaign_dict = list(message.campaign_dict)
    if not screen_dict or int(columns.screen_index.max()) >= len(screen_dict):
        raise BatchFormatError("screen_index out of screen_dict")
    if not all(0 < len(s) <= MAX_SCREEN_NAME for s in screen_dict):
        raise BatchFormatError(f"screen name empty or over {MAX_SCREEN_NAME} characters")
    if not campaign_dict or int(columns.campaign_index.max()) >= len(campaign_dict):
        raise BatchFormatError("campaign_index out of campaign_dict")
    if any(len(c) > MAX_CAMPAIGN_ID for c in campaign_dict):
        raise BatchFormatError(f"campaign id over {MAX_CAMPAIGN_ID} characters")
    for name, column in (("x", columns.x), ("y", columns.y)):
        # min and max propagate NaN, which fails both comparisons: NaN and inf are rejected.
        if not (column.min() >= COORDINATE_MIN and column.max() <= COORDINATE_MAX):
            raise BatchFormatError(f"{name} outside [0, 1] or not finite")
    types = columns.event_type
    if not (int(types.min()) >= EVENT_TYPES[0] and int(types.max()) <= EVENT_TYPES[-1]):
        raise BatchFormatError("event_type outside TAP/SCROLL/ACTION_CLICK")
    window = TimeWindow(message.received_at_ms, MAX_EVENT_AGE_LIMIT_S)
    earliest, latest = int(columns.timestamp_ms.min()), int(columns.timestamp_ms.max())
    if earliest < window.earliest_ms or latest > window.latest_ms:
        raise BatchFormatError(
            f"timestamp outside [{window.earliest_ms}, {window.latest_ms}] ms "
            f"(received_at_ms {message.received_at_ms})"
        )
    return TouchBatch(
        user_id=message.user_id,
        batch_id=message.batch_id,
        client_batch_id=message.client_batch_id,
        received_at_ms=message.received_at_ms,
        screen_dict=screen_dict,
        screen_index=columns.screen_index,
        campaign_dict=campaign_dict,
        campaign_index=columns.campaign_index,
        x=columns.x,
        y=columns.y,
        timestamp_ms=columns.timestamp_ms,
        event_type=columns.event_type.astype(np.uint8, copy=False),
    )


def decode_batches(payloads: Sequence[bytes]) -> list[TouchBatch | BatchFormatError]:
    """``decode_batch`` of every payload (its batch, or the error it raises), in order.

    A worker's flush decodes ~1,000 messages of ~500 events: per message, a
    dozen numpy calls on 500 values cost more in call overhead than in work.
    Here the columns of all messages are decoded and checked together, one
    numpy call per column and check for the whole list. A message that is not
    provably valid that way, for whatever reason, is decoded alone by
    ``decode_batch``, which gives its result or its error: so every outcome
    is ``decode_batch``'s by construction.
    """
    results: list[TouchBatch | BatchFormatError | None] = [None] * len(payloads)
    together: list[_Packed] = []
    for i, data in enumerate(payloads):
        packed = _packed_message(i, data)
        if packed is not None:
            together.append(packed)
    while together:
        rejected = _decode_together(together, results)
        if not rejected:
            break
        # Varints of a rejected message may have run into the next one's:
        # decode the others again without it.
        together = [p for p in together if p.index not in rejected]
        for i in rejected:
            results[i] = None
    out: list[TouchBatch | BatchFormatError] = []
    for i, data in enumerate(payloads):
        result = results[i]
        if result is None:
            try:
                result = decode_batch(data)
            except BatchFormatError as e:
                result = e
        out.append(result)
    return out


@dataclass(frozen=True)
class _Packed:
    """One message whose header is valid, with its columns' packed bytes."""

    index: int
    message: Any
    events: int
    screen_dict: list[str]
    campaign_dict: list[str]
    columns: tuple[bytes, ...]  # _PACKED_COLUMNS order


def _packed_message(index: int, data: bytes) -> _Packed | None:
    """The message if its header passes every check and its x and y are well formed;
    None sends it to ``decode_batch``."""
    try:
        message: Any = _packed_view().FromString(data)
    except DecodeError:
        return None
    if len(unknown_fields.UnknownFieldSet(message)):
        return None
    columns = tuple(_joined(getattr(message, name)) for name in _PACKED_COLUMNS)
    x, y, event_type = columns[2], columns[3], columns[5]
    n = len(x) // 4
    if len(x) % 4 or len(y) != len(x) or len(event_type) != n or not 0 < n <= MAX_EVENTS:
        return None
    if (
        message.format_version != FORMAT_VERSION
        or not 0 < len(message.user_id) <= MAX_USER_ID
        or not 0 < len(message.batch_id) <= MAX_BATCH_ID
        or not MIN_RECEIVED_AT_MS <= message.received_at_ms <= MAX_RECEIVED_AT_MS
    ):
        return None
    screen_dict, campaign_dict = list(message.screen_dict), list(message.campaign_dict)
    if not screen_dict or not campaign_dict:
        return None
    screen_lengths = list(map(len, screen_dict))  # map: no Python frame per name
    if not 0 < min(screen_lengths) <= max(screen_lengths) <= MAX_SCREEN_NAME:
        return None
    if max(map(len, campaign_dict)) > MAX_CAMPAIGN_ID:
        return None
    return _Packed(index, message, n, screen_dict, campaign_dict, columns)


def _decode_together(
    together: Sequence[_Packed], results: list[TouchBatch | BatchFormatError | None]
) -> set[int]:
    """Decode and check the columns of all of ``together`` at once; store the valid
    batches in ``results``; return the indexes of the messages that did not pass."""
    events = np.fromiter((p.events for p in together), np.int64, len(together))
    starts = np.zeros(len(together), dtype=np.int64)
    np.cumsum(events[:-1], out=starts[1:])
    rejected = np.zeros(len(together), dtype=np.bool_)

    def column(k: int) -> bytes:
        return b"".join(p.columns[k] for p in together)

    x = np.frombuffer(column(2), dtype="<f4").astype(np.float32, copy=False)
    y = np.frombuffer(column(3), dtype="<f4").astype(np.float32, copy=False)
    event_type = np.frombuffer(column(5), dtype=np.uint8)
    decoded = []
    for k, max_bytes in ((0, 4), (1, 4), (4, 9)):
        values, bad = _varints_of(together, k, column(k), events, max_bytes)
        rejected |= bad
        decoded.append(values)
    if rejected.any():
        return {p.index for p, r in zip(together, rejected.tolist(), strict=True) if r}
    screen_index, campaign_index, timestamp_ms = decoded
    n_screens = np.fromiter((len(p.screen_dict) for p in together), np.int64, len(together))
    n_campaigns = np.fromiter((len(p.campaign_dict) for p in together), np.int64, len(together))
    received = np.fromiter((p.message.received_at_ms for p in together), np.int64, len(together))
    windows = [TimeWindow(int(r), MAX_EVENT_AGE_LIMIT_S) for r in received.tolist()]
    earliest = np.fromiter((w.earliest_ms for w in windows), np.int64, len(windows))
    latest = np.fromiter((w.latest_ms for w in windows), np.int64, len(windows))
    # reduceat over each message's events (every message has at least one);
    # min and max propagate NaN, which fails every comparison.
    checks = (
        np.maximum.reduceat(screen_index, starts) < n_screens,
        np.maximum.reduceat(campaign_index, starts) < n_campaigns,
        np.minimum.reduceat(x, starts) >= COORDINATE_MIN,
        np.maximum.reduceat(x, starts) <= COORDINATE_MAX,
        np.minimum.reduceat(y, starts) >= COORDINATE_MIN,
        np.maximum.reduceat(y, starts) <= COORDINATE_MAX,
        np.minimum.reduceat(event_type, starts) >= EVENT_TYPES[0],
        np.maximum.reduceat(event_type, starts) <= EVENT_TYPES[-1],
        np.minimum.reduceat(timestamp_ms, starts) >= earliest,
        np.maximum.reduceat(timestamp_ms, starts) <= latest,
    )
    for check in checks:
        rejected |= ~check
    if rejected.any():
        return {p.index for p, r in zip(together, rejected.tolist(), strict=True) if r}
    screens = screen_index.astype(np.uint32)
    campaigns = campaign_index.astype(np.uint32)
    for p, a, b in zip(together, starts.tolist(), (starts + events).tolist(), strict=True):
        m = p.message
        results[p.index] = TouchBatch(
            user_id=m.user_id,
            batch_id=m.batch_id,
            client_batch_id=m.client_batch_id,
            received_at_ms=m.received_at_ms,
            screen_dict=p.screen_dict,
            screen_index=screens[a:b],
            campaign_dict=p.campaign_dict,
            campaign_index=campaigns[a:b],
            x=x[a:b],
            y=y[a:b],
            timestamp_ms=timestamp_ms[a:b],
            event_type=event_type[a:b],
        )
    return set()


def _varints_of(
    together: Sequence[_Packed], k: int, raw_bytes: bytes, events: IntArray, max_bytes: int
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    """Column ``k`` of every message, decoded at once, and which messages it rejects
    (a value count other than the message's events, a value wider than ``max_bytes``
    or running past the message's end)."""
    raw = np.frombuffer(raw_bytes, dtype=np.uint8)
    sizes = np.fromiter((len(p.columns[k]) for p in together), np.int64, len(together))
    more = raw >= 0x80  # continuation bit: the value goes on in the next byte
    values_in_all = len(raw) - int(np.count_nonzero(more))
    width = len(raw) // values_in_all if values_in_all else 0
    if width and width * values_in_all == len(raw) and not more[width - 1 :: width].any():
        # The usual case: every value of the column has one width (indexes below
        # 128, timestamps of one era). Then a message of events * width bytes
        # holds exactly its events' values, whole.
        bad = sizes != events * width
        if bad.any() or width > max_bytes:
            return np.zeros(0, dtype=np.int64), bad | (width > max_bytes)
        if width == 1:
            return raw.astype(np.int64), bad
        weights = np.left_shift(1, 7 * np.arange(width, dtype=np.int64))
        values: IntArray = (raw.reshape(values_in_all, width) & 0x7F).astype(np.int64) @ weights
        return values, bad
    ends = ~more
    ended = np.cumsum(ends, dtype=np.int64)
    last = np.maximum(np.cumsum(sizes) - 1, 0)
    counts = np.diff(ended[last] if len(raw) else np.zeros(len(sizes), np.int64), prepend=0)
    if len(raw):
        counts[sizes == 0] = 0
        bad = (counts != events) | ((sizes > 0) & ~ends[last])
    else:
        bad = events != 0
    if bad.any():
        return np.zeros(0, dtype=np.int64), bad
    stops = np.flatnonzero(ends)
    widths = np.diff(stops, prepend=-1)
    too_wide = widths > max_bytes
    if too_wide.any():
        message_of_value = np.searchsorted(np.cumsum(events), np.flatnonzero(too_wide), "right")
        bad[message_of_value] = True
        return np.zeros(0, dtype=np.int64), bad
    firsts = stops - widths + 1
    position = np.arange(len(raw), dtype=np.int64) - np.repeat(firsts, widths)
    payload = (raw & 0x7F).astype(np.int64) << (7 * position)
    return np.add.reduceat(payload, firsts), bad
