"""Helpers for tests that talk gRPC to a real server."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import _async as rpc_status_async


async def bad_request_fields(call: grpc.aio.UnaryUnaryCall) -> list[str]:
    """The field paths of the ``google.rpc.BadRequest`` detail of a failed call."""
    status = await rpc_status_async.from_call(call)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]
