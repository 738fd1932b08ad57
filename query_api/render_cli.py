"""``heatmap render``: ask a running query API for a heatmap PNG and write it to a file."""

from __future__ import annotations

import argparse
import sys

import grpc

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap.settings import Settings, SettingsError
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

TIMEOUT_S = 60.0


def _token(settings: Settings, args: argparse.Namespace) -> str:
    if args.token:
        token: str = args.token
        return token
    if not settings.auth.jwt_secret:
        raise SettingsError("HEATMAP_JWT_SECRET: required to mint a token (or pass --token)")
    return mint_token(settings.auth.jwt_secret, "heatmap-render-cli", [VIEW_HEATMAPS], 300)


def run(settings: Settings, args: argparse.Namespace) -> int:
    request = heatmap_pb2.RenderHeatmapRequest(
        query=heatmap_pb2.QueryHeatmapDataRequest(
            screen_name=args.screen,
            campaign_id=args.campaign or "",
            grid_size=args.grid_size,
        ),
        screenshot_id=args.screenshot_id or "",
        width=args.width,
    )
    limit = settings.server.max_message_bytes
    options = [("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        try:
            reply = stub.RenderHeatmap(
                request,
                metadata=(("authorization", f"Bearer {_token(settings, args)}"),),
                timeout=TIMEOUT_S,
            )
        except grpc.RpcError as e:
            print(f"render failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    args.out.write_bytes(reply.png)
    print(f"wrote {args.out} ({reply.width}x{reply.height}, {len(reply.png)} bytes)")
    return 0
