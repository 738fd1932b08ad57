"""``heatmap erase-user``: erase (or, with --undo, un-erase) one user's touch data.

Directly against the configured ClickHouse and Kafka (the worker group's
committed offsets), or, with ``--target``, through a running query service's
EraseUserData RPC (the only way while ``heatmap dev`` holds an embedded chDB
store). Prints one JSON line: the outcome, events and per-user rows removed.
"""

from __future__ import annotations

import argparse
import getpass
import json

import grpc

from heatmap.auth import ERASE_USER_DATA, mint_token
from heatmap.clickhouse import connect
from heatmap.settings import Settings, SettingsError
from query_api.erasure import ErasureError, Erasures, kafka_committed
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

TIMEOUT_S = 300.0


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.target:
        reply = _over_rpc(settings, args)
        print(
            json.dumps(
                {
                    "user_id": args.user_id,
                    "erasure_id": reply.erasure_id,
                    "outcome": reply.outcome,
                    "events": reply.events,
                    "rows_by_user": reply.rows_by_user,
                }
            )
        )
        return 0
    settings.require_clickhouse()
    bootstrap = settings.require_kafka()
    assert bootstrap
    client = connect(settings.clickhouse)
    try:
        erasures = Erasures(client, settings.kafka.topic, kafka_committed(settings.kafka))
        who = f"cli:{getpass.getuser()}"
        try:
            if args.undo:
                report = erasures.unerase(args.user_id, who)
            else:
                report = erasures.erase(args.user_id, who, dry_run=args.dry_run)
        except ErasureError as e:
            print(f"heatmap erase-user: {e}")
            return 1
    finally:
        client.close()
    print(
        json.dumps(
            {
                "user_id": report.user_id,
                "action": report.action,
                "erasure_id": report.erasure_id,
                "outcome": report.outcome,
                "events": report.events,
                "rows_by_user": report.rows_by_user,
                "negated_rows": report.negated_rows,
            }
        )
    )
    return 0


def _over_rpc(settings: Settings, args: argparse.Namespace) -> heatmap_pb2.EraseUserDataResponse:
    token: str | None = args.token
    if not token:
        if not settings.auth.jwt_secret:
            raise SettingsError("HEATMAP_JWT_SECRET: required to mint a token (or pass --token)")
        token = mint_token(
            settings.auth.jwt_secret, f"cli:{getpass.getuser()}", [ERASE_USER_DATA], 600
        )
    request = heatmap_pb2.EraseUserDataRequest(
        user_id=args.user_id, dry_run=args.dry_run, undo=args.undo
    )
    with grpc.insecure_channel(args.target) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        reply: heatmap_pb2.EraseUserDataResponse = stub.EraseUserData(
            request, metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT_S
        )
    return reply
