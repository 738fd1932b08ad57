"""Container health check: exit 0 when grpc.health.v1 says SERVING on this container's port.

Used by the image's HEALTHCHECK and by docker-compose (Kubernetes uses its
native gRPC probes instead). Port from HEATMAP_GRPC_PORT (default 50051).
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port = os.environ.get("HEATMAP_GRPC_PORT") or "50051"
    service = sys.argv[1] if len(sys.argv) > 1 else ""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=3
            )
        except grpc.RpcError as e:
            print(f"health check failed: {e.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"health: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
