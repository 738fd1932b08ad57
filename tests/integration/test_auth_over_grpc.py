"""The shared interceptor over a real gRPC channel: codes, BadRequest details, principal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from heatmap.auth import (
    MANAGE_HEATMAPS,
    VIEW_HEATMAPS,
    Authenticator,
    current_principal,
    mint_token,
)
from heatmap.errors import FieldViolation, InvalidArgument
from heatmap.grpc_server import ServiceInterceptor, bind, init_health, new_server, set_serving
from heatmap.settings import AuthSettings
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import bad_request_fields


class EchoService(heatmap_pb2_grpc.HeatmapServiceServicer):
    """Answers with the caller's id so the test sees what reached the handler."""

    async def IngestTouchEvents(
        self, request: heatmap_pb2.IngestTouchEventsRequest, context: grpc.aio.ServicerContext
    ) -> heatmap_pb2.IngestTouchEventsResponse:
        if request.batch_id == "bad":
            raise InvalidArgument(
                [
                    FieldViolation("batch_id", "is bad"),
                    FieldViolation("events[3].x", "out of range"),
                ]
            )
        return heatmap_pb2.IngestTouchEventsResponse(
            ingested_count=len(current_principal().user_id)
        )

    async def ListScreenshots(
        self, request: heatmap_pb2.ListScreenshotsRequest, context: grpc.aio.ServicerContext
    ) -> heatmap_pb2.ListScreenshotsResponse:
        return heatmap_pb2.ListScreenshotsResponse()


# Methods a server may carry beside the permission table (a debug servicer, a
# future streaming RPC): each records that it ran, so a test sees it never did.
REACHED: list[str] = []


async def _unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    REACHED.append("unary")
    return b"secret"


async def _unary_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    REACHED.append("unary_stream")
    yield b"secret"


async def _stream_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    REACHED.append("stream_stream")
    async for _ in requests:
        yield b"secret"


EXTRA = grpc.method_handlers_generic_handler(
    "heatmap.v1.HeatmapService",
    {
        "Unlisted": grpc.unary_unary_rpc_method_handler(_unary),
        "WatchSecrets": grpc.unary_stream_rpc_method_handler(_unary_stream),
    },
)
ADMIN = grpc.method_handlers_generic_handler(
    "heatmap.admin.v1.Admin", {"Shell": grpc.stream_stream_rpc_method_handler(_stream_stream)}
)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    auth = Authenticator(AuthSettings(jwt_secret=TEST_JWT_SECRET))
    server, health = new_server(
        interceptors=[ServiceInterceptor(auth)],
        max_message_bytes=1 << 20,
        register=[
            lambda s: heatmap_pb2_grpc.add_HeatmapServiceServicer_to_server(EchoService(), s),  # type: ignore[abstract]
            lambda s: s.add_generic_rpc_handlers([EXTRA, ADMIN]),
        ],
    )
    port = bind(server, "127.0.0.1", 0)
    await init_health(health)
    await server.start()
    await set_serving(health, True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(0)


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_principal_reaches_handler(channel: grpc.aio.Channel) -> None:
    stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
    reply = await stub.IngestTouchEvents(
        heatmap_pb2.IngestTouchEventsRequest(),
        metadata=md(mint_token(TEST_JWT_SECRET, "abcdef", [])),
    )
    assert reply.ingested_count == len("abcdef")


async def test_unauthenticated_and_permission_denied(channel: grpc.aio.Channel) -> None:
    stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.IngestTouchEvents(heatmap_pb2.IngestTouchEventsRequest())
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stub.IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(), metadata=md(mint_token("x" * 40, "u"))
        )
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stub.ListScreenshots(
            heatmap_pb2.ListScreenshotsRequest(screen_name="Home"),
            metadata=md(mint_token(TEST_JWT_SECRET, "device", [])),
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    ok = await stub.ListScreenshots(
        heatmap_pb2.ListScreenshotsRequest(screen_name="Home"),
        metadata=md(mint_token(TEST_JWT_SECRET, "analyst", [VIEW_HEATMAPS])),
    )
    assert list(ok.screenshots) == []


async def test_invalid_argument_carries_bad_request_details(channel: grpc.aio.Channel) -> None:
    stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
    call = stub.IngestTouchEvents(
        heatmap_pb2.IngestTouchEventsRequest(batch_id="bad"),
        metadata=md(mint_token(TEST_JWT_SECRET, "u", [])),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await bad_request_fields(call) == ["batch_id", "events[3].x"]


async def test_health_needs_no_token(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "heatmap.v1.HeatmapService", "liveness"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def _call(channel: grpc.aio.Channel, kind: str, method: str, metadata: Any) -> object:
    calls: dict[str, Callable[[], Any]] = {
        "unary": lambda: channel.unary_unary(method)(b"x", metadata=metadata),
        "unary_stream": lambda: _drain(channel.unary_stream(method)(b"x", metadata=metadata)),
        # No request iterator: the refusal comes before any message is read,
        # and a client still writing then would see its own write fail.
        "stream_stream": lambda: _drain(channel.stream_stream(method)(metadata=metadata)),
    }
    return await calls[kind]()


async def _drain(call: Any) -> list[bytes]:
    return [m async for m in call]


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("unary", "/heatmap.v1.HeatmapService/Unlisted"),
        ("unary_stream", "/heatmap.v1.HeatmapService/WatchSecrets"),
        ("stream_stream", "/heatmap.admin.v1.Admin/Shell"),
    ],
)
async def test_methods_outside_the_permission_table_are_denied(
    channel: grpc.aio.Channel, kind: str, method: str
) -> None:
    """Deny by default: a served method missing from the table, or streaming, never runs."""
    REACHED.clear()
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await _call(channel, kind, method, None)
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    admin = md(mint_token(TEST_JWT_SECRET, "root", [VIEW_HEATMAPS, MANAGE_HEATMAPS, "ADMIN"]))
    with pytest.raises(grpc.aio.AioRpcError) as authenticated:
        await _call(channel, kind, method, admin)
    assert authenticated.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert REACHED == []


async def test_unknown_method_needs_a_token_before_it_is_unimplemented(
    channel: grpc.aio.Channel,
) -> None:
    method = "/heatmap.v1.HeatmapService/NoSuchMethod"
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await channel.unary_unary(method)(b"")
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as authenticated:
        await channel.unary_unary(method)(b"", metadata=md(mint_token(TEST_JWT_SECRET, "u", [])))
    assert authenticated.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_watch_and_reflection_need_no_token(channel: grpc.aio.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="liveness")
    )
    first = await watch.read()
    assert isinstance(first, health_pb2.HealthCheckResponse)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name async for r in call for s in r.list_services_response.service}
    assert "heatmap.v1.HeatmapService" in names
