"""``heatmap render``: ask a running query API for a heatmap PNG and write it to a file.

Takes the query's filters (mode, user, event types, time range, campaign,
grid size). A failed call propagates as ``grpc.RpcError``: the CLI turns it
into one line naming what to do.
"""

from __future__ import annotations

import argparse
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap.settings import Settings, SettingsError
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

TIMEOUT_S = 60.0
MODES = {"all-users": heatmap_pb2.ALL_USERS, "per-user": heatmap_pb2.PER_USER}


def _token(settings: Settings, args: argparse.Namespace) -> str:
    if args.token:
        token: str = args.token
        return token
    if not settings.auth.jwt_secret:
        raise SettingsError("HEATMAP_JWT_SECRET: required to mint a token (or pass --token)")
    return mint_token(settings.auth.jwt_secret, "heatmap-render-cli", [VIEW_HEATMAPS], 300)


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def build_request(args: argparse.Namespace) -> heatmap_pb2.RenderHeatmapRequest:
    """The RenderHeatmapRequest for the parsed ``heatmap render`` options."""
    return heatmap_pb2.RenderHeatmapRequest(
        query=heatmap_pb2.QueryHeatmapDataRequest(
            screen_name=args.screen,
            campaign_id=args.campaign or "",
            mode=MODES[args.mode],
            user_id=args.user or "",
            event_types=[heatmap_pb2.TouchEventType.Value(n) for n in args.event_types],
            start_time=_timestamp(args.start),
            end_time=_timestamp(args.end),
            grid_size=args.grid_size,
            top_users=args.top_users,
        ),
        screenshot_id=args.screenshot_id or "",
        width=args.width,
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    request = build_request(args)
    token = _token(settings, args)
    limit = settings.server.max_message_bytes
    options = [("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        reply = stub.RenderHeatmap(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT_S
        )
    args.out.write_bytes(reply.png)
    print(f"wrote {args.out} ({reply.width}x{reply.height}, {len(reply.png)} bytes)")
    return 0
