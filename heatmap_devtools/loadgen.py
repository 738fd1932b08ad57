"""``heatmap loadgen``: a synthetic fleet sending real IngestTouchEvents batches at a target rate.

Requests are built up front from ``heatmap_devtools.fleet`` (so sending re-encodes
one event per request, not the batch) and sent as raw bytes over grpc.aio by
``concurrency`` senders following an open-loop schedule: request k is due at
``k * batch_size / rate`` seconds. Each batch comes from one device with its
own token (``sub`` = device id), and no two requests are the same bytes
(``DistinctRequests``). Prints a progress bar and a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
from tqdm import tqdm

from heatmap.auth import mint_token
from heatmap.settings import Settings, SettingsError
from heatmap_devtools.fleet import Fleet, FleetSpec
from schemas.api import method_path
from schemas.heatmap.v1 import heatmap_pb2

INGEST = method_path("IngestTouchEvents")


@dataclass
class LoadReport:
    requests: int = 0
    accepted_events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        lat = np.array(self.latencies_s or [0.0]) * 1000
        rate = self.accepted_events / self.elapsed_s if self.elapsed_s else 0.0
        rejected = ", ".join(f"{k}={v}" for k, v in self.rejected.items()) or "none"
        return (
            f"sent {self.requests} requests in {self.elapsed_s:.1f}s; "
            f"accepted {self.accepted_events} events ({rate:,.0f} events/s); "
            f"rejected: {rejected}; latency ms p50 {np.percentile(lat, 50):.1f} "
            f"p90 {np.percentile(lat, 90):.1f} p99 {np.percentile(lat, 99):.1f} "
            f"max {lat.max():.1f}"
        )


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
    progress: bool = True,
    timeout_s: float = 10.0,
) -> LoadReport:
    report = LoadReport()
    interval = batch_size / rate
    total = max(1, int(duration_s / interval))
    counter = itertools.count()
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

        async def sender() -> None:
            while (k := next(counter)) < total:
                delay = start + k * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                token = tokens[k % len(tokens)]
                sent = time.perf_counter()
                try:
                    reply = await call(
                        requests[k % len(requests)],
                        metadata=(("authorization", f"Bearer {token}"),),
                        timeout=timeout_s,
                    )
                    report.accepted_events += reply.ingested_count
                except grpc.aio.AioRpcError as e:
                    report.rejected[e.code().name] += 1
                report.latencies_s.append(time.perf_counter() - sent)
                report.requests += 1
                bar.update(batch_size)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
        report.elapsed_s = time.perf_counter() - start
    bar.close()
    return report


def run(settings: Settings, args: argparse.Namespace) -> int:
    secret = args.token_secret or settings.auth.jwt_secret
    if not secret:
        raise SettingsError("HEATMAP_JWT_SECRET (or --token-secret): needed to mint device tokens")
    fleet = Fleet(FleetSpec(users=args.devices, seed=args.seed))
    distinct = max(1, min(400, int(args.rate * args.duration / args.batch_size)))
    print(f"building {distinct} request templates of {args.batch_size} events...")
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
        )
    )
    print(report.summary())
    return 0 if report.accepted_events else 1
