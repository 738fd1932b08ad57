"""The ``heatmap`` command line: one entry point per deployable, plus tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from heatmap.settings import Settings, SettingsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heatmap", description="Mobile touch heatmaps pipeline")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="everything on one machine, embedded defaults")
    dev.add_argument("--grpc-port", type=int, default=50051)
    dev.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="explorer page and Connect RPC port (default: HEATMAP_HTTP_PORT or 8080; 0 = off)",
    )
    dev.add_argument("--data-dir", type=Path, default=Path(".heatmap-dev"))

    sub.add_parser("gateway", help="the ingest gateway (IngestTouchEvents), configured by env")
    sub.add_parser("worker", help="a stream worker (Kafka -> ClickHouse), configured by env")
    sub.add_parser("query-api", help="the query service (all other RPCs), configured by env")

    migrate = sub.add_parser("migrate", help="create or upgrade the ClickHouse schema")
    migrate.add_argument(
        "--cluster", default=None, help="ClickHouse cluster name: replicated tables ON CLUSTER"
    )
    migrate.add_argument(
        "--create-readonly-user",
        action="store_true",
        help="also create/update the query service's user of HEATMAP_CLICKHOUSE_READONLY_URL "
        "(SELECT only; a ClickHouse server, not chDB)",
    )

    infra = sub.add_parser("infra", help="local Kafka + S3 server as background daemons")
    infra.add_argument("action", choices=["up", "down", "status"])
    infra.add_argument("--dir", type=Path, default=None)

    token = sub.add_parser("token", help="mint a development JWT (HS256, HEATMAP_JWT_SECRET)")
    token.add_argument("--user", default="dev-user")
    token.add_argument("--permissions", default="VIEW_HEATMAPS,MANAGE_HEATMAPS")
    token.add_argument("--ttl", type=float, default=24 * 3600)

    render = sub.add_parser("render", help="draw a heatmap PNG through the query API")
    render.add_argument("--target", default="127.0.0.1:50051")
    render.add_argument("--screen", required=True)
    render.add_argument("--out", type=Path, required=True)
    render.add_argument("--campaign", default="")
    render.add_argument("--grid-size", type=int, default=64)
    render.add_argument("--width", type=int, default=0)
    render.add_argument("--screenshot-id", default="")
    render.add_argument("--token", default=None, help="bearer token (default: minted from secret)")

    erase = sub.add_parser(
        "erase-user", help="erase one user's touch data exactly (or --undo: count them again)"
    )
    erase.add_argument("user_id", help="the user's id (JWT sub)")
    erase.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    erase.add_argument(
        "--undo",
        action="store_true",
        help="un-erase: count the user's new events again (erased data stays erased)",
    )
    erase.add_argument(
        "--target",
        default=None,
        help="query API host:port: erase through its EraseUserData RPC (needed while "
        "heatmap dev holds a chDB store; default: ClickHouse and Kafka directly)",
    )
    erase.add_argument(
        "--token",
        default=None,
        help="with --target: bearer token with ERASE_USER_DATA (default: minted from "
        "HEATMAP_JWT_SECRET)",
    )

    loadgen = sub.add_parser("loadgen", help="a synthetic fleet sending touch batches")
    loadgen.add_argument("--target", default="127.0.0.1:50051")
    loadgen.add_argument("--rate", type=float, default=10_000, help="events per second offered")
    loadgen.add_argument("--duration", type=float, default=10.0, help="seconds")
    loadgen.add_argument("--batch-size", type=int, default=500)
    loadgen.add_argument("--devices", type=int, default=1000)
    loadgen.add_argument("--concurrency", type=int, default=16)
    loadgen.add_argument("--seed", type=int, default=7)
    loadgen.add_argument("--token-secret", default=None)

    demo = sub.add_parser("demo", help="upload sample screenshots, send load, render PNGs")
    demo.add_argument("--target", default="127.0.0.1:50051")
    demo.add_argument("--out", type=Path, default=Path("heatmap-demo"))
    demo.add_argument("--events", type=int, default=200_000)
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".heatmap-dev"),
        help="a heatmap dev data dir, to read its JWT secret",
    )
    demo.add_argument("--token-secret", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, settings)
    except SettingsError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    from heatmap.logs import configure_logging

    command: str = args.command
    if command in ("gateway", "worker", "query-api"):
        _ports_free(settings)
    if command in ("gateway", "worker", "query-api", "dev", "migrate", "demo", "erase-user"):
        configure_logging(settings.log_level, settings.log_format)
    if command == "gateway":
        from ingest_gateway.main import run as run_gateway

        return run_gateway(settings)
    if command == "worker":
        from stream_workers.main import run as run_worker

        return run_worker(settings)
    if command == "query-api":
        from query_api.main import run as run_query

        return run_query(settings)
    if command == "dev":
        from heatmap_cli.dev import run as run_dev

        return run_dev(
            settings, grpc_port=args.grpc_port, data_dir=args.data_dir, http_port=args.http_port
        )
    if command == "migrate":
        return _migrate(settings, args.cluster, args.create_readonly_user)
    if command == "infra":
        return _infra(args.action, args.dir)
    if command == "token":
        from heatmap.auth import mint_token

        settings.require_auth()
        if not settings.auth.jwt_secret:
            raise SettingsError("HEATMAP_JWT_SECRET: required to mint tokens")
        perms = [p for p in args.permissions.split(",") if p]
        print(mint_token(settings.auth.jwt_secret, args.user, perms, args.ttl))
        return 0
    if command == "render":
        from query_api.render_cli import run as run_render

        return run_render(settings, args)
    if command == "erase-user":
        from query_api.erasure_cli import run as run_erase

        return run_erase(settings, args)
    if command == "loadgen":
        from heatmap_devtools.loadgen import run as run_loadgen

        return run_loadgen(settings, args)
    if command == "demo":
        from heatmap_devtools.demo import run as run_demo

        return run_demo(settings, args)
    raise AssertionError(command)


def _ports_free(settings: Settings) -> None:
    """The ports a deployable will listen on are free, checked before it starts
    anything: a taken one is ``PortInUse`` (one line, exit 2), not a traceback
    after it has connected to Kafka."""
    from heatmap.ports import ensure_free

    server = settings.server
    ensure_free("HEATMAP_GRPC_PORT", server.grpc_host, server.grpc_port)
    if server.metrics_port:
        ensure_free("HEATMAP_METRICS_PORT", "0.0.0.0", server.metrics_port)


def _migrate(settings: Settings, cluster: str | None, readonly_user: bool = False) -> int:
    from heatmap.clickhouse import create_readonly_user, is_chdb, migrate

    url = settings.require_clickhouse()
    if readonly_user:  # checked before anything changes
        if is_chdb(url):
            raise SettingsError(
                "HEATMAP_CLICKHOUSE_URL: --create-readonly-user needs a ClickHouse server; "
                "chDB runs in-process without users (docs/operations.md)"
            )
        if not settings.clickhouse.readonly_url:
            raise SettingsError(
                "HEATMAP_CLICKHOUSE_READONLY_URL: required by --create-readonly-user "
                "(http(s)://user:password@host:port/db, the query service's URL)"
            )
    if cluster:
        from heatmap.clickhouse_cluster import migrate_cluster

        applied = migrate_cluster(settings.clickhouse, cluster)
    else:
        applied = migrate(settings.clickhouse)
    report: dict[str, object] = {"database": settings.clickhouse.database, "applied": applied}
    if readonly_user:
        report["readonly_user"] = create_readonly_user(settings.clickhouse, cluster)
    print(json.dumps(report))
    return 0


def _infra(action: str, directory: Path | None) -> int:
    from heatmap_devtools.localinfra import stack

    root = directory or stack.default_dir()
    if action == "up":
        info = stack.up(root)
        for key, value in info.items():
            if key.startswith("HEATMAP_"):
                print(f"export {key}={value}")
        return 0
    if action == "down":
        stack.down(root)
        return 0
    print(json.dumps(stack.status(root), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
