from __future__ import annotations

import base64

import pytest
from google.rpc import error_details_pb2

from heatmap.errors import (
    MAX_FIELD_VIOLATIONS,
    MAX_MESSAGE_BYTES,
    MAX_STATUS_BYTES,
    FieldViolation,
    InvalidArgument,
    NotFound,
    bounded_bad_request,
    clip,
    to_rpc_status,
)


def unpack(error: InvalidArgument) -> tuple[int, list[error_details_pb2.BadRequest.FieldViolation]]:
    status = to_rpc_status(error)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return len(status.SerializeToString()), list(bad.field_violations)


def test_few_violations_pass_unchanged() -> None:
    violations = [FieldViolation("events[1].x", "must be within [0, 1], got 2.0")] * 3
    _, listed = unpack(InvalidArgument(violations))
    assert [(v.field, v.description) for v in listed] == [
        ("events[1].x", "must be within [0, 1], got 2.0")
    ] * 3


def test_many_violations_are_cut_to_the_limit_plus_a_count() -> None:
    violations = [FieldViolation(f"events[{i}].x", "must be finite, got nan") for i in range(3000)]
    size, listed = unpack(InvalidArgument(violations))
    assert len(listed) == MAX_FIELD_VIOLATIONS + 1
    assert [v.field for v in listed[:-1]] == [f"events[{i}].x" for i in range(50)]
    assert listed[-1].field == ""
    assert listed[-1].description.startswith(f"{3000 - MAX_FIELD_VIOLATIONS} more violations")
    assert size <= MAX_STATUS_BYTES


@pytest.mark.parametrize("text", ["S" * 100_000, "\u00e9" * 100_000, "\U0001f600" * 30_001])
def test_hostile_strings_keep_the_whole_status_under_the_bound(text: str) -> None:
    """Whatever a client makes us echo, the trailer stays well under 8 KiB on the wire."""
    violations = [FieldViolation(f"events[{i}].{text}", f"got {text}") for i in range(3000)]
    error = InvalidArgument(violations, summary=text)
    status = to_rpc_status(error)
    serialized = status.SerializeToString()
    assert len(serialized) <= MAX_STATUS_BYTES
    assert len(base64.b64encode(serialized)) + 3 * len(status.message.encode()) < 8192
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    _, listed = unpack(error)
    # The byte budget ends the list before the count limit; the count still adds up.
    shown, tail = listed[:-1], listed[-1]
    assert 0 < len(shown) <= MAX_FIELD_VIOLATIONS
    assert len(shown) + int(tail.description.split()[0]) == 3000


def test_budget_is_respected_for_any_size() -> None:
    violations = [FieldViolation("f" * 500, "d" * 500)] * 200
    for budget in (512, 1024, 2048, 4096):
        bad = bounded_bad_request(violations, budget)
        assert bad.ByteSize() <= budget
        assert int(bad.field_violations[-1].description.split()[0]) == 200 - (
            len(bad.field_violations) - 1
        )


def test_clip_never_splits_a_character_and_marks_the_cut() -> None:
    assert clip("short", 10) == "short"
    cut = clip("\u00e9" * 100, 11)
    assert cut.endswith("...")
    assert len(cut.encode()) <= 11
    assert set(cut[:-3]) == {"\u00e9"}


def test_other_errors_have_a_short_message() -> None:
    status = to_rpc_status(NotFound("screenshot " + "x" * 10_000 + " not found"))
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES
    assert not status.details
