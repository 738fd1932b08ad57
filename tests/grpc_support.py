"""Helpers for tests that talk gRPC to a real server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import grpc
from google.rpc import error_details_pb2
from grpc_status import _async as rpc_status_async
from prometheus_client import CollectorRegistry

from heatmap.serve import Component, serve
from heatmap.settings import Settings


async def bad_request_fields(call: grpc.aio.UnaryUnaryCall) -> list[str]:
    """The field paths of the ``google.rpc.BadRequest`` detail of a failed call."""
    status = await rpc_status_async.from_call(call)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return [v.field for v in bad_request.field_violations]


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, services: Sequence[Component], registry: CollectorRegistry | None = None
) -> AsyncIterator[int]:
    """``heatmap.serve`` running ``services`` in this event loop: the gRPC port once
    it listens (a startup error is raised here); the server is stopped on exit."""
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def stop_signal() -> None:
        await stop.wait()

    task = asyncio.create_task(
        serve(
            settings,
            list(services),
            registry or CollectorRegistry(),
            on_ready=ready.set_result,
            stop_signal=stop_signal,
        )
    )
    try:
        await asyncio.wait([task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if task.done():
            task.result()
        if not ready.done():
            raise TimeoutError("heatmap.serve did not listen within 60 s")
        yield ready.result()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
