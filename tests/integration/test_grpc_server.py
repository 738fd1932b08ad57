"""The shared server scaffolding over real channels: concurrency cap, reflection v1 and v1alpha."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

from heatmap.auth import Authenticator
from heatmap.grpc_server import ServiceInterceptor, bind, init_health, new_server
from heatmap.reflection import V1_SERVICE_NAME
from heatmap.settings import AuthSettings, Settings
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import serving
from tests.integration.test_gateway_support import auth


class SlowService(heatmap_pb2_grpc.HeatmapServiceServicer):
    """IngestTouchEvents waits until released, so calls pile up in progress."""

    def __init__(self, expect: int) -> None:
        self.release = asyncio.Event()
        self.all_entered = asyncio.Event()
        self.entered = 0
        self.expect = expect

    async def IngestTouchEvents(
        self, request: heatmap_pb2.IngestTouchEventsRequest, context: grpc.aio.ServicerContext
    ) -> heatmap_pb2.IngestTouchEventsResponse:
        self.entered += 1
        if self.entered == self.expect:
            self.all_entered.set()
        await self.release.wait()
        return heatmap_pb2.IngestTouchEventsResponse(ingested_count=1)


async def test_calls_beyond_the_cap_are_resource_exhausted_and_the_rest_complete() -> None:
    service = SlowService(expect=3)  # type: ignore[abstract]
    server, health = new_server(
        interceptors=[ServiceInterceptor(Authenticator(AuthSettings(jwt_secret=TEST_JWT_SECRET)))],
        max_message_bytes=1 << 20,
        max_concurrent_rpcs=3,
        register=[lambda s: heatmap_pb2_grpc.add_HeatmapServiceServicer_to_server(service, s)],
    )
    port = bind(server, "127.0.0.1", 0)
    await init_health(health)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
            request = heatmap_pb2.IngestTouchEventsRequest()
            held = [
                asyncio.ensure_future(stub.IngestTouchEvents(request, metadata=auth()))
                for _ in range(3)
            ]
            await asyncio.wait_for(service.all_entered.wait(), 10)
            with pytest.raises(grpc.aio.AioRpcError) as over:
                await stub.IngestTouchEvents(request, metadata=auth(), timeout=5)
            assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Health counts too: a probe during such a burst fails alike.
            with pytest.raises(grpc.aio.AioRpcError) as probe:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="liveness"), timeout=5
                )
            assert probe.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            service.release.set()
            assert [r.ingested_count for r in await asyncio.gather(*held)] == [1, 1, 1]
            assert service.entered == 3
            reply = await stub.IngestTouchEvents(request, metadata=auth(), timeout=5)
            assert reply.ingested_count == 1
    finally:
        await server.stop(0)


def test_the_cap_comes_from_the_setting() -> None:
    assert Settings.from_env({}).server.max_concurrent_rpcs == 256
    env = {"HEATMAP_GRPC_MAX_CONCURRENT_RPCS": "7"}
    assert Settings.from_env(env).server.max_concurrent_rpcs == 7


# ------------------------------------------------------------- reflection


# The upstream grpc/reflection/v1/reflection.proto (messages and numbers), as a
# v1 client compiles it: independent of how the server derives its copy.
V1_PROTO = """
syntax = "proto3";
package grpc.reflection.v1;
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest)
      returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest { string containing_type = 1; int32 extension_number = 2; }
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse { string base_type_name = 1; repeated int32 extension_number = 2; }
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse { int32 error_code = 1; string error_message = 2; }
"""


def v1_messages(workdir: Path) -> tuple[Any, Any]:
    """ServerReflectionRequest/Response compiled by protoc from the v1 proto."""
    source = workdir / "grpc" / "reflection" / "v1" / "reflection.proto"
    source.parent.mkdir(parents=True)
    source.write_text(V1_PROTO)
    out = workdir / "v1.pb"
    args = ["protoc", f"-I{workdir}", f"--descriptor_set_out={out}", str(source)]
    assert protoc.main(args) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"grpc.reflection.v1.ServerReflection{kind}")
        )
        for kind in ("Request", "Response")
    )


@pytest.fixture
async def served(base_settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    """The real ``serve()`` (no components) on loopback."""
    settings = replace(base_settings, server=replace(base_settings.server, metrics_port=0))
    async with (
        serving(settings, []) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        yield channel


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_services_and_describes_them(
    served: grpc.aio.Channel, version: str, tmp_path: Path
) -> None:
    """A v1 client (grpcurl, Postman, grpc-java) and a v1alpha one see the same answers."""
    request_type, response_type = v1_messages(tmp_path)
    call = served.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )(
        iter(
            [
                request_type(list_services=""),
                request_type(file_containing_symbol="heatmap.v1.HeatmapService"),
                request_type(file_containing_symbol=V1_SERVICE_NAME),
            ]
        )
    )
    listed, heatmap_file, v1_file = [r async for r in call]
    assert {s.name for s in listed.list_services_response.service} == {
        "heatmap.v1.HeatmapService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in heatmap_file.file_descriptor_response.file_descriptor_proto
    ]
    service = next(f for f in files if f.package == "heatmap.v1").service[0]
    assert service.name == "HeatmapService"
    assert "IngestTouchEvents" in {m.name for m in service.method}
    (v1,) = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in v1_file.file_descriptor_response.file_descriptor_proto
    ]
    assert v1.package == "grpc.reflection.v1"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
