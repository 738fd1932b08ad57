"""The ``heatmap`` command line: one entry point per deployable, plus tools.

Expected failures end in one line on stderr saying what failed and what to
do, never a traceback: exit 2 for usage and configuration (argparse, a bad
``HEATMAP_*`` value, a tool missing from this install), exit 1 for a failure
at run time (the server refused, is not there, did not answer).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import grpc

from heatmap.settings import Settings, SettingsError

# Commands that live in heatmap_devtools: a development install only.
DEV_TOOLS = ("dev", "infra", "loadgen", "demo")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _iso_time(value: str) -> datetime:
    """ISO 8601; no offset means UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _event_types(value: str) -> list[str]:
    from schemas.heatmap.v1 import heatmap_pb2

    known = [n for n, _ in heatmap_pb2.TouchEventType.items() if not n.endswith("UNSPECIFIED")]
    names = [n.strip().upper() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{value!r}: a comma list of {', '.join(n.lower() for n in known)}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="heatmap", description="Mobile touch heatmaps pipeline")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="everything on one machine, embedded defaults")
    dev.add_argument("--grpc-port", type=int, default=50051, help="gRPC port (default: 50051)")
    dev.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="explorer page and Connect RPC port (default: HEATMAP_HTTP_PORT or 8080; 0 = off)",
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".heatmap-dev"),
        help="where Kafka, chDB, screenshots and the dev JWT secret live (default: .heatmap-dev)",
    )
    dev.add_argument(
        "--no-demo",
        dest="demo",
        action="store_false",
        help="do not load the demo data set (6 screens, screenshots, 200k events) "
        "into a new data dir",
    )

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
    infra.add_argument(
        "action",
        choices=["up", "down", "status"],
        help="up: start and print the HEATMAP_* exports; down: stop; status: JSON",
    )
    infra.add_argument(
        "--dir", type=Path, default=None, help="state directory (default: a per-user cache dir)"
    )

    token = sub.add_parser("token", help="mint a development JWT (HS256, HEATMAP_JWT_SECRET)")
    token.add_argument("--user", default="dev-user", help="the token's sub (default: dev-user)")
    token.add_argument(
        "--permissions",
        default="VIEW_HEATMAPS,MANAGE_HEATMAPS",
        help="comma list (default: VIEW_HEATMAPS,MANAGE_HEATMAPS)",
    )
    token.add_argument(
        "--ttl", type=float, default=24 * 3600, help="lifetime in seconds (default: 86400)"
    )

    render = sub.add_parser("render", help="draw a heatmap PNG through the query API")
    render.add_argument(
        "--target", default="127.0.0.1:50051", help="query API host:port (default: %(default)s)"
    )
    render.add_argument("--screen", required=True, help="screen name (required)")
    render.add_argument("--out", type=Path, required=True, help="PNG file to write (required)")
    render.add_argument("--campaign", default="", help="one campaign id (default: all)")
    render.add_argument(
        "--mode",
        choices=["all-users", "per-user"],
        default="all-users",
        help="all-users: one heatmap of everyone; per-user: each user's cells (default: all-users)",
    )
    render.add_argument("--user", default="", help="only this user's events (default: all users)")
    render.add_argument(
        "--top-users",
        type=int,
        default=0,
        help="per-user mode: only the N users with the most touches (default: 0, all)",
    )
    render.add_argument(
        "--event-types",
        type=_event_types,
        default=[],
        help="comma list of tap, scroll, action_click (default: all)",
    )
    render.add_argument(
        "--start",
        type=_iso_time,
        default=None,
        help="ISO 8601 time, inclusive, UTC-hour granularity; no offset means UTC (default: open)",
    )
    render.add_argument(
        "--end", type=_iso_time, default=None, help="ISO 8601 time, exclusive (default: open)"
    )
    render.add_argument(
        "--grid-size", type=int, default=64, help="cells per axis, a power of two 8..512"
    )
    render.add_argument(
        "--width", type=int, default=0, help="PNG width in pixels (default: the screenshot's)"
    )
    render.add_argument(
        "--screenshot-id", default="", help="backdrop screenshot (default: the screen's newest)"
    )
    render.add_argument(
        "--token", default=None, help="bearer token (default: minted from HEATMAP_JWT_SECRET)"
    )

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
    loadgen.add_argument(
        "--target", default="127.0.0.1:50051", help="gateway host:port (default: %(default)s)"
    )
    loadgen.add_argument(
        "--rate", type=float, default=10_000, help="events per second offered (default: 10000)"
    )
    loadgen.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds of wall clock; no request is sent after it (default: 10)",
    )
    loadgen.add_argument(
        "--grace",
        type=float,
        default=2.0,
        help="seconds after --duration for open calls to be answered; then they are "
        "cancelled (default: 2)",
    )
    loadgen.add_argument(
        "--timeout", type=float, default=10.0, help="per-call deadline in seconds (default: 10)"
    )
    loadgen.add_argument(
        "--batch-size", type=int, default=500, help="events per request (default: 500)"
    )
    loadgen.add_argument(
        "--devices", type=int, default=1000, help="devices (token subjects) (default: 1000)"
    )
    loadgen.add_argument(
        "--concurrency", type=int, default=16, help="calls in flight at most (default: 16)"
    )
    loadgen.add_argument("--seed", type=int, default=7, help="the fleet's random seed")
    loadgen.add_argument(
        "--token-secret",
        default=None,
        help="JWT secret to mint device tokens (default: HEATMAP_JWT_SECRET); "
        "heatmap dev keeps its own in <data-dir>/dev-jwt-secret",
    )

    demo = sub.add_parser("demo", help="upload sample screenshots, send load, render PNGs")
    demo.add_argument(
        "--target", default="127.0.0.1:50051", help="heatmap host:port (default: %(default)s)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("heatmap-demo"), help="directory for the PNGs"
    )
    demo.add_argument(
        "--events", type=int, default=200_000, help="events to send (default: 200000)"
    )
    demo.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".heatmap-dev"),
        help="the running heatmap dev's data dir, to read its JWT secret (default: .heatmap-dev)",
    )
    demo.add_argument(
        "--token-secret", default=None, help="JWT secret (default: HEATMAP_JWT_SECRET, --data-dir)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    try:
        settings = Settings.from_env()
        return _dispatch(args, settings)
    except SettingsError as e:
        return _fail(2, f"configuration error: {e}")
    except ModuleNotFoundError as e:
        if command in DEV_TOOLS and (e.name or "").startswith("heatmap_devtools"):
            return _fail(
                2,
                f"`heatmap {command}` is a development tool and this install has no "
                "heatmap_devtools (the runtime image ships only the deployables): "
                "use a development install of the project",
            )
        raise
    except grpc.RpcError as e:
        return _fail(1, rpc_error_line(command, args, e))
    except OSError as e:
        if command not in ("render", "demo"):
            raise
        where = f"{e.filename}: " if e.filename else ""
        return _fail(1, f"heatmap {command}: {where}{e.strerror or e}")
    except KeyboardInterrupt:
        return _fail(130, f"heatmap {command}: interrupted")


def _fail(code: int, line: str) -> int:
    print(line, file=sys.stderr)
    return code


def rpc_error_line(command: str, args: argparse.Namespace, error: grpc.RpcError) -> str:
    """One line for a failed call: what failed and what to do."""
    target: str = getattr(args, "target", "") or "the target"
    code: grpc.StatusCode = error.code()
    details = " ".join(str(error.details() or "").split())[:300]
    if code == grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
        return f"no heatmap server at {target}: start `heatmap dev` or pass --target"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = {
            "demo": "pass --data-dir of the running heatmap dev (or --token-secret)",
            "loadgen": "pass --token-secret of the running heatmap dev "
            "(its <data-dir>/dev-jwt-secret)",
        }.get(command, "pass --token, or set HEATMAP_JWT_SECRET to the server's secret")
        return f"the server rejected the token ({details}): {hint}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"the server refused ({details}): use a token with that permission"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"heatmap {command}: {target} did not answer in time; is it overloaded?"
    return f"heatmap {command}: the server at {target} answered {code.name}: {details}"


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
            settings,
            grpc_port=args.grpc_port,
            data_dir=args.data_dir,
            http_port=args.http_port,
            demo=args.demo,
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
