"""``heatmap loadgen`` stops at ``--duration`` of wall clock against a real
gRPC server that is slow, never answers, or refuses, and its summary counts
what the server saw.

The server is an in-process ``grpc.aio`` server on loopback serving the
ingest method path with a handler whose pace the test sets.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from heatmap_devtools.loadgen import (
    CUT_AT_STOP,
    INGEST,
    LoadReport,
    check_server,
    print_report,
    send_load,
)
from heatmap_devtools.localinfra.process import free_port
from schemas.heatmap.v1 import heatmap_pb2

BATCH = 10
REQUESTS = [
    heatmap_pb2.IngestTouchEventsRequest(
        events=[heatmap_pb2.TouchEvent(screen_name=f"s{i}", x=0.5, y=0.5) for _ in range(BATCH)]
    ).SerializeToString()
    for i in range(4)
]


@dataclass
class Seen:
    received: int = 0
    answered: int = 0
    refused: int = 0
    cancelled: int = 0
    open_calls: set[int] = field(default_factory=set)


Behaviour = Callable[[int, grpc.aio.ServicerContext], Awaitable[None]]


async def _server(behaviour: Behaviour, seen: Seen) -> tuple[grpc.aio.Server, str]:
    async def ingest(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        n = seen.received
        seen.received += 1
        seen.open_calls.add(n)
        try:
            await behaviour(n, context)
        except asyncio.CancelledError:
            seen.cancelled += 1
            raise
        finally:
            seen.open_calls.discard(n)
        seen.answered += 1
        request = heatmap_pb2.IngestTouchEventsRequest.FromString(data)
        reply = heatmap_pb2.IngestTouchEventsResponse(ingested_count=len(request.events))
        return reply.SerializeToString()

    service, method = INGEST.strip("/").split("/")
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(ingest)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Behaviour, Seen], Awaitable[str]]]:
    servers: list[grpc.aio.Server] = []

    async def start(behaviour: Behaviour, seen: Seen) -> str:
        server, target = await _server(behaviour, seen)
        servers.append(server)
        return target

    yield start
    for server in servers:
        await server.stop(grace=None)


async def _load(target: str, *, duration_s: float, grace_s: float, **kw: float) -> LoadReport:
    return await send_load(
        target,
        REQUESTS,
        ["token"],
        rate=kw.get("rate", 2_000),
        duration_s=duration_s,
        batch_size=BATCH,
        concurrency=int(kw.get("concurrency", 4)),
        progress=False,
        timeout_s=kw.get("timeout_s", 30.0),
        grace_s=grace_s,
        stop_after_s=kw.get("stop_after_s"),
    )


def _balanced(report: LoadReport) -> None:
    answered = report.accepted_requests + sum(report.rejected.values())
    assert answered + sum(report.failed.values()) == report.sent_requests
    assert report.sent_requests <= report.offered_requests


async def test_a_server_that_never_answers_is_cut_off_at_duration_plus_grace(
    serve: Callable[[Behaviour, Seen], Awaitable[str]],
) -> None:
    seen = Seen()

    async def never(n: int, context: grpc.aio.ServicerContext) -> None:
        await asyncio.Event().wait()

    target = await serve(never, seen)
    begun = time.monotonic()
    report = await _load(target, duration_s=1.0, grace_s=0.5, concurrency=4)
    wall = time.monotonic() - begun

    assert 1.5 <= wall < 2.5, wall
    assert report.offered_requests == 200  # 2,000 events/s for 1 s in batches of 10
    assert report.sent_requests == 4  # each sender waits on its first call
    assert report.accepted_requests == report.accepted_events == 0
    assert report.failed == {CUT_AT_STOP: 4}
    assert not report.rejected
    assert report.unsent_requests == 196
    _balanced(report)
    for _ in range(50):  # the cancellations reach the server
        if seen.cancelled == 4:
            break
        await asyncio.sleep(0.02)
    assert (seen.received, seen.answered, seen.cancelled) == (4, 0, 4)


async def test_a_slow_server_gets_what_it_can_take_and_the_counts_match_it(
    serve: Callable[[Behaviour, Seen], Awaitable[str]],
) -> None:
    seen = Seen()

    async def slow(n: int, context: grpc.aio.ServicerContext) -> None:
        await asyncio.sleep(0.3)

    target = await serve(slow, seen)
    begun = time.monotonic()
    report = await _load(target, duration_s=1.5, grace_s=0.2, concurrency=3)
    wall = time.monotonic() - begun

    assert wall < 1.5 + 0.2 + 0.8, wall
    _balanced(report)
    # 3 senders, 0.3 s a call: about 15 calls in 1.5 s of the 300 offered.
    assert 9 <= report.sent_requests <= 18, report.as_dict()
    assert report.sent_requests == seen.received
    assert report.accepted_requests == seen.answered
    assert report.accepted_events == BATCH * seen.answered
    assert sum(report.failed.values()) == seen.received - seen.answered
    assert set(report.failed) <= {CUT_AT_STOP}
    assert report.unsent_requests == report.offered_requests - seen.received > 250


async def test_a_later_stop_lets_a_slow_server_take_the_whole_data_set(
    serve: Callable[[Behaviour, Seen], Awaitable[str]],
) -> None:
    """The demo's case: a fixed data set, a machine slower than the rate."""
    seen = Seen()

    async def slow(n: int, context: grpc.aio.ServicerContext) -> None:
        await asyncio.sleep(0.05)

    target = await serve(slow, seen)
    # 40 requests offered in 0.2 s; 4 senders at 0.05 s a call need ~0.5 s.
    report = await _load(target, duration_s=0.2, grace_s=0.2, concurrency=4, stop_after_s=10.0)
    _balanced(report)
    assert report.offered_requests == 40
    assert report.sent_requests == report.accepted_requests == seen.answered == 40
    assert report.unsent_requests == 0
    assert not report.failed
    short = await _load(target, duration_s=0.2, grace_s=0.2, concurrency=4)
    assert short.sent_requests < 40  # without it the same load is cut at 0.2 s


async def test_refusals_are_counted_by_status(
    serve: Callable[[Behaviour, Seen], Awaitable[str]],
) -> None:
    seen = Seen()

    async def every_third_refused(n: int, context: grpc.aio.ServicerContext) -> None:
        if n % 3 == 0:
            seen.refused += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full")
        if n % 3 == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "kafka down")

    target = await serve(every_third_refused, seen)
    begun = time.monotonic()
    report = await _load(target, duration_s=1.0, grace_s=1.0, rate=300, concurrency=4)
    assert time.monotonic() - begun < 1.0 + 1.0 + 0.8

    _balanced(report)
    assert report.offered_requests == 30
    # Answered at once: on a busy machine a few may still be behind schedule at the stop.
    assert report.sent_requests == seen.received >= 20
    assert report.rejected == {"RESOURCE_EXHAUSTED": seen.refused}
    assert report.failed == {"UNAVAILABLE": seen.received - seen.refused - seen.answered}
    assert report.accepted_requests == seen.answered
    assert report.accepted_events == BATCH * seen.answered

    out = io.StringIO()  # not a terminal
    print_report(report, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["offered_events"] == 30 * BATCH
    assert summary["sent_events"] == seen.received * BATCH
    assert summary["accepted_events"] == BATCH * seen.answered
    assert summary["rejected"] == {"RESOURCE_EXHAUSTED": seen.refused}


async def test_the_server_check_fails_only_when_nothing_is_there(
    serve: Callable[[Behaviour, Seen], Awaitable[str]],
) -> None:
    async def instant(n: int, context: grpc.aio.ServicerContext) -> None:
        return None

    # This server has no health service (like a proxy that does not route it):
    # UNIMPLEMENTED is an answer, so the run goes ahead.
    target = await serve(instant, Seen())
    await asyncio.to_thread(check_server, target)
    with pytest.raises(grpc.RpcError) as error:
        await asyncio.to_thread(check_server, f"127.0.0.1:{free_port()}")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
