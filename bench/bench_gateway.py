"""Ingest gateway throughput and latency, beside the same run's gRPC ceiling.

    .venv/bin/python -m bench.bench_gateway [--repeats 3] [--duration 8] [--clients 2]
                                            [--concurrency 32]

What it does (everything on loopback, everything stopped at the end):

1. a Kafka broker (Apache Kafka from its jars, in a temp dir) unless
   ``HEATMAP_KAFKA_BOOTSTRAP`` is set, and a fresh 12-partition topic;
2. two servers, each its own process (so clients and servers do not share a
   GIL): the real gateway (``python -m heatmap_cli.cli gateway``: validation,
   columnar encoding, confluent-kafka with ``acks=all``, idempotence, lz4),
   and the *ceiling*: a trivial handler on the same stack (``heatmap.serve``
   with the same interceptor: JWT check, metrics, health) that only decodes the
   request and answers its event count;
3. a few unmeasured seconds of load on each server (JIT, connections), then
   per repeat: closed-loop maximum of the ceiling, closed-loop maximum of the
   gateway (``--clients`` processes x ``--concurrency`` calls in flight,
   500-event requests from a synthetic fleet, 64 device tokens), then the
   gateway open-loop at half its measured maximum for p50/p99 latency, and
   the ceiling server at that same rate (the machine's latency floor);
4. medians over the repeats, printed as a table and one JSON line, with each
   server's CPU microseconds per event (user + system of its process, all
   threads, over its maximum phase): on a shared machine events/s move with
   the neighbours' load, CPU per event much less.

The machine is shared (2 cores): Kafka, the server and the clients compete
for CPU, as they did for the ceiling figure in docs/measurements.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from heatmap.auth import mint_token
from heatmap.settings import KafkaSettings, Settings
from heatmap_devtools.fleet import FLEET_KINDS, Fleet, FleetSpec
from heatmap_devtools.localinfra.process import free_port, service_env
from schemas.api import method_path
from schemas.heatmap.v1 import heatmap_pb2

SECRET = "bench-secret-0123456789-0123456789-abcdef"
METHOD = method_path("IngestTouchEvents")
EVENTS_PER_REQUEST = 500
DEVICES = 64


# ---------------------------------------------------------------- requests


def build_requests(count: int, seed: int, kind: str = "synthetic") -> list[bytes]:
    """``count`` distinct 500-event requests (every event timestamped), serialized."""
    fleet = Fleet(FleetSpec(kind=kind, batch_events=EVENTS_PER_REQUEST))
    fleet._rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ev = fleet.events(EVENTS_PER_REQUEST)
        request = heatmap_pb2.IngestTouchEventsRequest()
        for i in range(len(ev)):
            event = request.events.add(
                screen_name=fleet.screen_names[ev.screen[i]],
                x=float(ev.x[i]),
                y=float(ev.y[i]),
                campaign_id=fleet.campaign_ids[ev.campaign[i]],
                event_type=heatmap_pb2.TouchEventType.ValueType(int(ev.event_type[i])),
            )
            event.timestamp.FromMilliseconds(int(ev.timestamp_ms[i]))
        out.append(request.SerializeToString())
    return out


# ---------------------------------------------------------------- client process


async def _client(args: argparse.Namespace) -> dict[str, object]:
    requests = build_requests(16, seed=args.seed, kind=args.fleet)
    tokens = [
        (("authorization", f"Bearer {mint_token(SECRET, f'bench-device-{i:03d}', [])}"),)
        for i in range(DEVICES)
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    async with grpc.aio.insecure_channel(args.target) as channel:
        call = channel.unary_unary(METHOD)
        counter = iter(range(1 << 62))

        async def one() -> None:
            n = next(counter)
            started = time.perf_counter()
            try:
                await call(requests[n % len(requests)], metadata=tokens[n % DEVICES], timeout=10)
            except grpc.aio.AioRpcError as e:
                errors[e.code().name] = errors.get(e.code().name, 0) + 1
                return
            latencies.append(time.perf_counter() - started)

        # Warm up (connections, JIT-less caches), then measure.
        await asyncio.gather(*(one() for _ in range(min(args.concurrency, 16))))
        latencies.clear()
        errors.clear()
        started = time.perf_counter()
        cpu_started = time.process_time()
        end = started + args.duration
        if args.rate <= 0:

            async def worker() -> None:
                while time.perf_counter() < end:
                    await one()

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        else:
            interval = 1.0 / args.rate
            tasks: set[asyncio.Task[None]] = set()
            next_at = time.perf_counter()
            while next_at < end:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) < 512:
                    task = asyncio.create_task(one())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    errors["client_backlog"] = errors.get("client_backlog", 0) + 1
                next_at += interval
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    return {
        "ok": len(latencies),
        "elapsed": elapsed,
        "cpu_s": cpu,
        "errors": errors,
        "latencies": latencies,
    }


# ---------------------------------------------------------------- trivial server process


class Trivial:
    """The ceiling: decode the request, answer its event count (same server stack)."""

    name = "trivial"

    async def start(self) -> None:
        return None

    def handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        async def ingest(
            request: heatmap_pb2.IngestTouchEventsRequest, context: grpc.aio.ServicerContext
        ) -> heatmap_pb2.IngestTouchEventsResponse:
            return heatmap_pb2.IngestTouchEventsResponse(ingested_count=len(request.events))

        return [
            grpc.method_handlers_generic_handler(
                "heatmap.v1.HeatmapService",
                {
                    "IngestTouchEvents": grpc.unary_unary_rpc_method_handler(
                        ingest,
                        request_deserializer=heatmap_pb2.IngestTouchEventsRequest.FromString,
                        response_serializer=heatmap_pb2.IngestTouchEventsResponse.SerializeToString,
                    )
                },
            )
        ]

    def healthy(self) -> bool:
        return True

    async def stop(self) -> None:
        return None


def _serve_trivial() -> int:
    from heatmap.serve import serve

    settings = Settings.from_env()
    registry = CollectorRegistry()
    asyncio.run(serve(settings, [Trivial()], registry))
    return 0


# ---------------------------------------------------------------- orchestration


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def _server_env(bootstrap: str, topic: str, port: int) -> dict[str, str]:
    return service_env(
        HEATMAP_KAFKA_BOOTSTRAP=bootstrap,
        HEATMAP_KAFKA_TOPIC=topic,
        HEATMAP_JWT_SECRET=SECRET,
        HEATMAP_GRPC_HOST="127.0.0.1",
        HEATMAP_GRPC_PORT=str(port),
        HEATMAP_METRICS_PORT="0",
        HEATMAP_LOG_LEVEL="warning",
        HEATMAP_SHUTDOWN_GRACE_S="5",
    )


def _start_server(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Server:
    port = int(env["HEATMAP_GRPC_PORT"])
    log = (logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = Server(name, port, proc)
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(logs / f'{name}.log').read_text()[-2000:]}")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return server
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{name} not SERVING within 60 s")


def _stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


@dataclass(frozen=True)
class Run:
    events_per_s: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]
    cpu_share: dict[str, float]  # CPU seconds per wall second (2.0 = both cores)
    # user + system CPU microseconds per accepted event, per watched process:
    # what a noisy machine does not change as much as events/s.
    cpu_us_per_event: dict[str, float]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drive(
    target: str,
    clients: int,
    concurrency: int,
    duration: float,
    rate: float,
    watch: dict[str, int],
    fleet: str = "synthetic",
) -> Run:
    cpu_before = {name: cpu_seconds(pid) for name, pid in watch.items()}
    wall = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bench_gateway",
                "client",
                "--target",
                target,
                "--concurrency",
                str(concurrency),
                "--duration",
                str(duration),
                "--rate",
                str(rate / clients if rate > 0 else 0),
                "--seed",
                str(100 + i),
                "--fleet",
                fleet,
            ],
            stdout=subprocess.PIPE,
        )
        for i in range(clients)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=duration + 60)
        results.append(json.loads(out))
    wall = time.perf_counter() - wall
    # Server-side shares over the whole phase (incl. the clients' ~1 s start-up).
    cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watch.items()}
    cpu_share = {name: used / wall for name, used in cpu_used.items()}
    ok = sum(int(r["ok"]) for r in results)
    events = max(1, ok * EVENTS_PER_REQUEST)
    elapsed = max(float(r["elapsed"]) for r in results)
    latencies = np.array([x for r in results for x in r["latencies"]], dtype=np.float64) * 1000
    errors: dict[str, int] = {}
    for r in results:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    cpu_share["clients"] = sum(float(r["cpu_s"]) for r in results) / elapsed
    return Run(
        cpu_share={k: round(v, 2) for k, v in cpu_share.items()},
        cpu_us_per_event={k: round(v * 1e6 / events, 3) for k, v in cpu_used.items()},
        events_per_s=ok * EVENTS_PER_REQUEST / elapsed,
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        errors=errors,
    )


@contextlib.contextmanager
def _kafka(workdir: Path) -> Iterator[tuple[str, int | None]]:
    if os.environ.get("HEATMAP_KAFKA_BOOTSTRAP"):
        yield os.environ["HEATMAP_KAFKA_BOOTSTRAP"], None
        return
    from heatmap_devtools.localinfra.kafka import KafkaBroker

    broker = KafkaBroker(workdir / "kafka")
    broker.start()
    try:
        yield broker.bootstrap, broker.pid
    finally:
        broker.stop()


def _main(args: argparse.Namespace) -> int:
    from heatmap.kafka_admin import ensure_topics

    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp,
        _kafka(Path(tmp)) as (boot, kafka_pid),
    ):
        topic = f"bench-touch-{os.getpid()}"
        ensure_topics(KafkaSettings(bootstrap=boot, topic=topic, dlq_topic=topic + "-dlq"))
        logs = Path(tmp)
        servers: list[Server] = []
        try:
            gw_env = _server_env(boot, topic, free_port())
            servers.append(
                _start_server(
                    "gateway", [sys.executable, "-m", "heatmap_cli.cli", "gateway"], gw_env, logs
                )
            )
            tr_env = _server_env(boot, topic, free_port())
            servers.append(
                _start_server(
                    "trivial",
                    [sys.executable, "-m", "bench.bench_gateway", "trivial"],
                    tr_env,
                    logs,
                )
            )
            gateway, trivial = servers
            watch = {"trivial": trivial.proc.pid, "gateway": gateway.proc.pid}
            if kafka_pid is not None:
                watch["kafka"] = kafka_pid
            load = (args.clients, args.concurrency, args.duration)
            if args.warmup > 0:
                # Not measured: the producer's idempotence handshake, the
                # servers' first calls and above all the broker's JIT. Under
                # this load a fresh broker burns 0.6 CPU s/s at first and
                # settles at ~0.12 after ~30 s; on 2 shared cores that CPU
                # comes out of the gateway's share (its rate rose from 0.42
                # to 0.49 M events/s over those 30 s), so a short warm-up
                # measures the JVM, not the gateway.
                _drive(gateway.target, *load[:2], args.warmup, 0, {}, args.fleet)
                _drive(trivial.target, *load[:2], min(args.warmup, 4), 0, {}, args.fleet)
            rows = []
            for r in range(args.repeats):
                ceiling = _drive(trivial.target, *load, 0, watch, args.fleet)
                peak = _drive(gateway.target, *load, 0, watch, args.fleet)
                half_rate = peak.events_per_s / 2 / EVENTS_PER_REQUEST
                half = _drive(gateway.target, *load, half_rate, watch, args.fleet)
                # The same offered rate on the ceiling server: the latency floor
                # of this machine right now (clients, grpc, scheduler).
                floor = _drive(trivial.target, *load, half_rate, watch, args.fleet)
                row = {
                    "repeat": r + 1,
                    "ceiling_events_per_s": ceiling.events_per_s,
                    "gateway_events_per_s": peak.events_per_s,
                    "ratio": peak.events_per_s / ceiling.events_per_s,
                    "gateway_max_p50_ms": peak.p50_ms,
                    "gateway_max_p99_ms": peak.p99_ms,
                    "half_rate_events_per_s": half.events_per_s,
                    "half_p50_ms": half.p50_ms,
                    "half_p99_ms": half.p99_ms,
                    "floor_p50_ms": floor.p50_ms,
                    "floor_p99_ms": floor.p99_ms,
                    "errors": {"ceiling": ceiling.errors, "max": peak.errors, "half": half.errors},
                    "cpu_share": {"ceiling": ceiling.cpu_share, "max": peak.cpu_share},
                    # Each server's own CPU per event at its maximum.
                    "gateway_cpu_us_per_event": peak.cpu_us_per_event.get("gateway", 0.0),
                    "ceiling_cpu_us_per_event": ceiling.cpu_us_per_event.get("trivial", 0.0),
                    "kafka_cpu_us_per_event": peak.cpu_us_per_event.get("kafka", 0.0),
                }
                rows.append(row)
                print(
                    f"repeat {r + 1}: ceiling {ceiling.events_per_s / 1e6:.3f} M ev/s | "
                    f"gateway {peak.events_per_s / 1e6:.3f} M ev/s "
                    f"({row['ratio']:.0%}, p50 {peak.p50_ms:.1f} ms, p99 {peak.p99_ms:.1f} ms) | "
                    f"CPU/event gateway {row['gateway_cpu_us_per_event']:.2f} us, "
                    f"ceiling {row['ceiling_cpu_us_per_event']:.2f} us | "
                    f"at {half.events_per_s / 1e6:.3f} M ev/s: p50 {half.p50_ms:.1f} ms, "
                    f"p99 {half.p99_ms:.1f} ms (trivial server at that rate: "
                    f"p50 {floor.p50_ms:.1f} ms, p99 {floor.p99_ms:.1f} ms) | "
                    f"errors {row['errors']} | "
                    f"CPU s/s ceiling {ceiling.cpu_share} max {peak.cpu_share}",
                    flush=True,
                )
        finally:
            for server in servers:
                _stop_server(server)

    def median(key: str) -> float:
        return statistics.median(float(row[key]) for row in rows)  # type: ignore[arg-type]

    summary = {
        "ceiling_events_per_s": median("ceiling_events_per_s"),
        "gateway_events_per_s": median("gateway_events_per_s"),
        "ratio": median("ratio"),
        "half_rate_events_per_s": median("half_rate_events_per_s"),
        "half_p50_ms": median("half_p50_ms"),
        "half_p99_ms": median("half_p99_ms"),
        "gateway_max_p99_ms": median("gateway_max_p99_ms"),
        "gateway_cpu_us_per_event": median("gateway_cpu_us_per_event"),
        "ceiling_cpu_us_per_event": median("ceiling_cpu_us_per_event"),
        "kafka_cpu_us_per_event": median("kafka_cpu_us_per_event"),
        "floor_p50_ms": median("floor_p50_ms"),
        "floor_p99_ms": median("floor_p99_ms"),
        "repeats": args.repeats,
        "fleet": args.fleet,
        "duration_s": args.duration,
        "clients": args.clients,
        "concurrency": args.concurrency,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(
        f"\nmedian of {args.repeats}: ceiling {summary['ceiling_events_per_s'] / 1e6:.3f} M ev/s, "
        f"gateway {summary['gateway_events_per_s'] / 1e6:.3f} M ev/s "
        f"= {summary['ratio']:.0%} of ceiling (target >= 45%); CPU per event: gateway "
        f"{summary['gateway_cpu_us_per_event']:.2f} us, ceiling "
        f"{summary['ceiling_cpu_us_per_event']:.2f} us, Kafka "
        f"{summary['kafka_cpu_us_per_event']:.2f} us; at half rate "
        f"({summary['half_rate_events_per_s'] / 1e6:.3f} M ev/s) "
        f"p50 {summary['half_p50_ms']:.1f} ms, "
        f"p99 {summary['half_p99_ms']:.1f} ms (target < 50 ms); trivial server at that rate: "
        f"p50 {summary['floor_p50_ms']:.1f} ms, p99 {summary['floor_p99_ms']:.1f} ms"
    )
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gateway")
    sub = parser.add_subparsers(dest="role")
    client = sub.add_parser("client", help="(internal) one load-generating process")
    client.add_argument("--target", required=True)
    client.add_argument("--concurrency", type=int, default=32)
    client.add_argument("--duration", type=float, default=8.0)
    client.add_argument("--rate", type=float, default=0.0, help="requests/s; 0: closed loop")
    client.add_argument("--seed", type=int, default=100)
    client.add_argument("--fleet", choices=FLEET_KINDS, default="synthetic")
    sub.add_parser("trivial", help="(internal) the ceiling server, configured by HEATMAP_*")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="unmeasured seconds of gateway load first"
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight per client")
    parser.add_argument(
        "--fleet", choices=FLEET_KINDS, default="synthetic", help="workload (docs/fleets.md)"
    )
    args = parser.parse_args(argv)
    if args.role == "client":
        print(json.dumps(asyncio.run(_client(args))))
        return 0
    if args.role == "trivial":
        return _serve_trivial()
    return _main(args)


if __name__ == "__main__":
    sys.exit(main())
