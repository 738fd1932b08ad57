"""Domain errors and their one mapping to gRPC status codes.

Handlers raise these; ``heatmap.grpc_server`` turns them into a status (with a
``google.rpc.BadRequest`` detail for INVALID_ARGUMENT). Third-party errors are
wrapped with ``raise ... from e`` where they are caught.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


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


def to_rpc_status(error: HeatmapError) -> status_pb2.Status:
    """The google.rpc.Status for ``error``, with BadRequest details if any."""
    status = status_pb2.Status(code=_CODE_NUMBERS[error.code], message=str(error))
    if isinstance(error, InvalidArgument) and error.violations:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        status.details.append(detail)
    return status


_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
