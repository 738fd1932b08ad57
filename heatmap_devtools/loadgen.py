"""``heatmap loadgen``: a synthetic fleet sending real IngestTouchEvents batches at a target rate.

Requests are built up front from ``heatmap_devtools.fleet`` (so sending re-encodes
one event per request, not the batch) and sent as raw bytes over grpc.aio by
``concurrency`` senders following an open-loop schedule: request k is due at
``k * batch_size / rate`` seconds. Each batch comes from one device with its
own token (``sub`` = device id), and no two requests are the same bytes
(``DistinctRequests``).

The run ends at ``duration`` seconds of wall clock whether or not the server
keeps up: no request is sent after it, calls still open then get ``grace``
seconds to be answered and are cancelled after that. The summary says what
was offered (due by the schedule), sent, accepted, and rejected or failed by
status: one JSON line when stdout is not a terminal, a table when it is. The
progress bar is drawn only on a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

from heatmap.auth import mint_token
from heatmap.settings import Settings, SettingsError
from heatmap_devtools.fleet import Fleet, FleetSpec
from schemas.api import method_path
from schemas.heatmap.v1 import heatmap_pb2

INGEST = method_path("IngestTouchEvents")
DEFAULT_GRACE_S = 2.0

# No answer, or not one about the request itself: the batch did not get
# through (a device would retry it). Every other non-OK status is the server
# refusing the request (invalid, unauthenticated, shed with RESOURCE_EXHAUSTED).
FAILED_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)
# A call still open when the grace after --duration ran out.
CUT_AT_STOP = "CANCELLED_AT_STOP"


@dataclass
class LoadReport:
    """What one run offered, sent and got back (requests; events where named).

    ``sent = accepted + sum(rejected) + sum(failed)``; ``offered - sent`` were
    due by the schedule but not sent before the stop (every sender was
    waiting for an answer).
    """

    batch_size: int = 0
    offered_requests: int = 0
    sent_requests: int = 0
    accepted_requests: int = 0
    accepted_events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def unsent_requests(self) -> int:
        return self.offered_requests - self.sent_requests

    def as_dict(self) -> dict[str, object]:
        lat = np.array(self.latencies_s or [0.0]) * 1000
        rate = self.accepted_events / self.elapsed_s if self.elapsed_s else 0.0
        return {
            "duration_s": self.duration_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "batch_size": self.batch_size,
            "offered_requests": self.offered_requests,
            "offered_events": self.offered_requests * self.batch_size,
            "sent_requests": self.sent_requests,
            "sent_events": self.sent_requests * self.batch_size,
            "unsent_requests": self.unsent_requests,
            "accepted_requests": self.accepted_requests,
            "accepted_events": self.accepted_events,
            "accepted_events_per_s": round(rate, 1),
            "rejected": dict(sorted(self.rejected.items())),
            "failed": dict(sorted(self.failed.items())),
            "latency_ms": {
                "p50": round(float(np.percentile(lat, 50)), 1),
                "p90": round(float(np.percentile(lat, 90)), 1),
                "p99": round(float(np.percentile(lat, 99)), 1),
                "max": round(float(lat.max()), 1),
            },
        }

    def summary(self) -> str:
        """One line: the JSON object of ``as_dict``."""
        return json.dumps(self.as_dict())

    def table(self) -> str:
        """The same figures as a table for a person at a terminal."""
        d = self.as_dict()
        lat = d["latency_ms"]
        assert isinstance(lat, dict)

        def codes(counts: Counter[str]) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "-"

        rows = [
            (
                "offered",
                f"{self.offered_requests:,}",
                f"{self.offered_requests * self.batch_size:,}",
            ),
            ("sent", f"{self.sent_requests:,}", f"{self.sent_requests * self.batch_size:,}"),
            ("not sent by the stop", f"{self.unsent_requests:,}", ""),
            ("accepted", f"{self.accepted_requests:,}", f"{self.accepted_events:,}"),
            ("rejected", f"{sum(self.rejected.values()):,}", codes(self.rejected)),
            ("failed", f"{sum(self.failed.values()):,}", codes(self.failed)),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':{width}}  {'requests':>10}  events / by status"]
        lines += [f"{n:{width}}  {r:>10}  {e}".rstrip() for n, r, e in rows]
        lines.append(
            f"{self.elapsed_s:.1f} s for a --duration of {self.duration_s:g} s; "
            f"{d['accepted_events_per_s']:,.0f} events/s accepted; latency ms "
            f"p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} max {lat['max']}"
        )
        return "\n".join(lines)


def build_requests(fleet: Fleet, count: int, batch_size: int) -> list[bytes]:
    """``count`` serialized requests of ``batch_size`` events each (one screen visit per batch)."""
    events = fleet.events(count * batch_size)
    order = np.argsort(events.screen, kind="stable")  # batches mostly about one screen
    requests = []
    for i in range(count):
        idx = order[i * batch_size : (i + 1) * batch_size]
        request = heatmap_pb2.IngestTouchEventsRequest()
        for j in idx.tolist():
            event = request.events.add(
                screen_name=fleet.screen_names[events.screen[j]],
                x=float(events.x[j]),
                y=float(events.y[j]),
                campaign_id=fleet.campaign_ids[events.campaign[j]],
                event_type=int(events.event_type[j]),
            )
            event.timestamp.FromMilliseconds(int(events.timestamp_ms[j]))
        requests.append(request.SerializeToString())
    return requests


class DistinctRequests:
    """Request ``k`` of an endless stream in which no two requests are the same bytes.

    The gateway takes the same bytes from the same user for a resend (the
    implicit idempotency key of a request without ``batch_id``) and counts
    them once, so a load cycling through a pool of requests would be
    acknowledged in full and counted in part. Request ``k`` is template
    ``k % n`` with its last event's timestamp moved ``k // n`` ms on: cheap
    (one event re-encoded per request), same events and screens as the
    template, and unique for every ``k``.
    """

    def __init__(self, templates: list[bytes]) -> None:
        self._prefixes: list[bytes] = []
        self._last: list[heatmap_pb2.TouchEvent] = []
        self.screens: list[Counter[str]] = []  # per template: events per screen
        for data in templates:
            request = heatmap_pb2.IngestTouchEventsRequest.FromString(data)
            self.screens.append(Counter(e.screen_name for e in request.events))
            self._last.append(request.events.pop())
            # Repeated fields concatenate: prefix + one-event message = the whole request.
            self._prefixes.append(request.SerializeToString())

    def __len__(self) -> int:
        return 1 << 62  # endless; send_load indexes with k % len

    def __getitem__(self, k: int) -> bytes:
        n = len(self._prefixes)
        last = heatmap_pb2.TouchEvent()
        last.CopyFrom(self._last[k % n])
        shift = k // n
        if shift:
            last.timestamp.FromMilliseconds(last.timestamp.ToMilliseconds() + shift)
        tail = heatmap_pb2.IngestTouchEventsRequest(events=[last]).SerializeToString()
        return self._prefixes[k % n] + tail

    def screen_counts(self, k: int) -> Counter[str]:
        return self.screens[k % len(self._prefixes)]


async def send_load(
    target: str,
    requests: list[bytes] | DistinctRequests,
    tokens: list[str],
    *,
    rate: float,
    duration_s: float,
    batch_size: int,
    concurrency: int,
    progress: bool | None = None,
    timeout_s: float = 10.0,
    grace_s: float = DEFAULT_GRACE_S,
    stop_after_s: float | None = None,
) -> LoadReport:
    """Offer ``rate`` events/s for ``duration_s`` of wall clock, then stop.

    ``stop_after_s`` (default ``duration_s``) moves the wall-clock stop later:
    the demo offers a fixed data set and wants all of it sent, even by a
    machine too slow for the rate. Returns by the stop + ``grace_s`` (plus
    the channel's close) however
    slow the server is: calls open at the end of the grace are cancelled and
    counted as failed ``CANCELLED_AT_STOP``. ``progress=None``: a bar only
    when stderr is a terminal.
    """
    interval = batch_size / rate
    total = max(1, int(duration_s / interval))
    report = LoadReport(batch_size=batch_size, offered_requests=total, duration_s=duration_s)
    counter = itertools.count()
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=total * batch_size, unit="ev", unit_scale=True, disable=not progress)
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 4 << 20)]
    ) as channel:
        call = channel.unary_unary(
            INGEST,
            request_serializer=None,
            response_deserializer=heatmap_pb2.IngestTouchEventsResponse.FromString,
        )
        start = time.perf_counter()
        stop_at = start + (duration_s if stop_after_s is None else max(duration_s, stop_after_s))

        async def sender() -> None:
            while (k := next(counter)) < total:
                delay = start + k * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.perf_counter()
                if sent >= stop_at:  # behind schedule: what is left stays unsent
                    return
                report.sent_requests += 1
                try:
                    reply = await call(
                        requests[k % len(requests)],
                        metadata=(("authorization", f"Bearer {tokens[k % len(tokens)]}"),),
                        timeout=timeout_s,
                    )
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    (report.failed if code in FAILED_CODES else report.rejected)[code.name] += 1
                except asyncio.CancelledError:
                    report.failed[CUT_AT_STOP] += 1
                    raise
                else:
                    report.accepted_requests += 1
                    report.accepted_events += reply.ingested_count
                    report.latencies_s.append(time.perf_counter() - sent)
                bar.update(batch_size)

        tasks = [asyncio.create_task(sender()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=stop_at + grace_s - time.perf_counter())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        report.elapsed_s = time.perf_counter() - start
    bar.close()
    return report


def check_server(target: str, timeout_s: float = 5.0) -> None:
    """Raise the ``grpc.RpcError`` of a health check that finds nothing at
    ``target``: one clear error before building load, not a summary of
    thousands of UNAVAILABLE calls. Any other answer (a proxy that does not
    route the health service, a server too busy to answer in time) is left
    to the run itself to report."""
    with grpc.insecure_channel(target) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise


def print_report(report: LoadReport, out: TextIO | None = None) -> None:
    out = out if out is not None else sys.stdout
    print(report.table() if out.isatty() else report.summary(), file=out, flush=True)


def run(settings: Settings, args: argparse.Namespace) -> int:
    secret = args.token_secret or settings.auth.jwt_secret
    if not secret:
        raise SettingsError(
            "--token-secret (or HEATMAP_JWT_SECRET): needed to mint device tokens; "
            "the running heatmap dev keeps its secret in <data-dir>/dev-jwt-secret"
        )
    check_server(args.target)
    fleet = Fleet(FleetSpec(users=args.devices, seed=args.seed))
    distinct = max(1, min(400, int(args.rate * args.duration / args.batch_size)))
    print(f"building {distinct} request templates of {args.batch_size} events...", file=sys.stderr)
    requests = DistinctRequests(build_requests(fleet, distinct, args.batch_size))
    tokens = [mint_token(secret, fleet.user_id(i), []) for i in range(args.devices)]
    report = asyncio.run(
        send_load(
            args.target,
            requests,
            tokens,
            rate=args.rate,
            duration_s=args.duration,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
            grace_s=args.grace,
        )
    )
    print_report(report)
    if report.rejected.get("UNAUTHENTICATED") == report.sent_requests and report.sent_requests:
        print(
            "the server rejected every token: pass --token-secret of the running heatmap dev "
            "(its <data-dir>/dev-jwt-secret)",
            file=sys.stderr,
        )
    return 0 if report.accepted_events else 1
