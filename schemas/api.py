"""Names of the public gRPC API, read from the compiled contract so that the
servers, the auth table, the router tests and the tools cannot drift apart."""

from __future__ import annotations

from schemas.heatmap.v1 import heatmap_pb2

SERVICE: str = heatmap_pb2.DESCRIPTOR.services_by_name["HeatmapService"].full_name


def method_path(rpc: str) -> str:
    """The HTTP/2 path of one RPC, ``/heatmap.v1.HeatmapService/<rpc>``; a name
    the contract does not have is a ``KeyError``, not a silent 404 later."""
    method = heatmap_pb2.DESCRIPTOR.services_by_name["HeatmapService"].methods_by_name[rpc]
    return f"/{SERVICE}/{method.name}"
