"""gRPC server reflection under both names: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only v1alpha, while current grpcurl, Postman and
grpc-java/-go clients ask for v1 first. The v1 protocol is the v1alpha one
renamed (same messages, same field numbers), so one servicer answers both
and the bytes are identical; the v1 file descriptor is derived from
v1alpha's so a client can also describe the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1_ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_FILE = "grpc/reflection/v1/reflection.proto"
METHODS = frozenset(
    f"/{name}/ServerReflectionInfo" for name in (V1_SERVICE_NAME, V1_ALPHA_SERVICE_NAME)
)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """List ``service_names`` and both reflection services, over v1 and v1alpha."""
    register_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(
        (*service_names, V1_SERVICE_NAME, V1_ALPHA_SERVICE_NAME)
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                V1_SERVICE_NAME,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            )
        ]
    )


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Add the v1 reflection file to ``pool`` (the default pool) unless it is there."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(".grpc.reflection.v1alpha."):
                field.type_name = ".grpc.reflection.v1." + field.type_name.rsplit(".", 1)[-1]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    pool.Add(proto)
