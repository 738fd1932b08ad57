"""Domain errors and their one mapping to gRPC status codes.

Handlers raise these; ``heatmap.grpc_server`` turns them into a status (with a
``google.rpc.BadRequest`` detail for INVALID_ARGUMENT). Third-party errors are
wrapped with ``raise ... from e`` where they are caught.

The status is bounded whatever the input: mobile stacks refuse trailers over
8 KiB (grpc-java's default header-list limit; grpc-python gives up at 16 KiB
and reports RESOURCE_EXHAUSTED instead of the real code), and a client
controls much of what a violation may echo. So at most
``MAX_FIELD_VIOLATIONS`` violations are listed, then one entry (field ``""``)
saying how many more were left off; strings are clipped; the serialized
Status stays under ``MAX_STATUS_BYTES`` (base64 on the wire: < 5.5 KiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

MAX_FIELD_VIOLATIONS = 50
MAX_STATUS_BYTES = 4096
MAX_MESSAGE_BYTES = 256
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 160
# Room kept for the "N more left off" entry and the Status/Any framing.
_FRAMING_BYTES = 128
_TAIL_BYTES = 96


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class HeatmapError(Exception):
    """Root of every error the services map to a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(HeatmapError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation], summary: str | None = None) -> None:
        self.violations = tuple(violations)
        fields = ", ".join(v.field for v in self.violations[:10])
        more = f" (+{len(self.violations) - 10} more)" if len(self.violations) > 10 else ""
        super().__init__(summary or f"invalid field(s): {fields}{more}")


class Unauthenticated(HeatmapError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(HeatmapError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(HeatmapError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(HeatmapError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(HeatmapError):
    """A backing system (Kafka, ClickHouse, object store) is down; retryable."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(HeatmapError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class InternalError(HeatmapError):
    """A bug or a broken deployment: not retryable; the message carries no internals."""

    code = grpc.StatusCode.INTERNAL


class Unimplemented(HeatmapError):
    code = grpc.StatusCode.UNIMPLEMENTED


def to_rpc_status(error: HeatmapError) -> status_pb2.Status:
    """The google.rpc.Status for ``error``, bounded, with BadRequest details if any."""
    message = clip(str(error), MAX_MESSAGE_BYTES)
    status = status_pb2.Status(code=_CODE_NUMBERS[error.code], message=message)
    if isinstance(error, InvalidArgument) and error.violations:
        detail = any_pb2.Any()
        detail.Pack(bounded_bad_request(error.violations, MAX_STATUS_BYTES - len(message.encode())))
        status.details.append(detail)
    return status


def bounded_bad_request(
    violations: Sequence[FieldViolation], budget_bytes: int = MAX_STATUS_BYTES
) -> error_details_pb2.BadRequest:
    """The first violations that fit (count and bytes), then how many were left off."""
    room = budget_bytes - _FRAMING_BYTES - _TAIL_BYTES
    listed: list[error_details_pb2.BadRequest.FieldViolation] = []
    for v in violations[:MAX_FIELD_VIOLATIONS]:
        entry = error_details_pb2.BadRequest.FieldViolation(
            field=clip(v.field, MAX_FIELD_BYTES),
            description=clip(v.description, MAX_DESCRIPTION_BYTES),
        )
        cost = entry.ByteSize() + 3  # tag + length prefix of the repeated entry
        if cost > room:
            break
        room -= cost
        listed.append(entry)
    left_off = len(violations) - len(listed)
    if left_off:
        listed.append(
            error_details_pb2.BadRequest.FieldViolation(
                field="",
                description=f"{left_off} more violations left off "
                f"(at most {MAX_FIELD_VIOLATIONS} are listed)",
            )
        )
    return error_details_pb2.BadRequest(field_violations=listed)


def clip(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - 3].decode("utf-8", "ignore") + "..."


_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
