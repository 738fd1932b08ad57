"""Explorer: time from a filter change to the heatmap drawn in the browser, beside the RPC.

    python -m bench.bench_explorer [--events 1000000] [--changes 30]

1. Starts its own ``heatmap dev`` (Kafka, chDB, screenshot files in a
   temporary data dir) with the explorer on a free HTTP port.
2. Sends ``--events`` events of the synthetic fleet (``heatmap_devtools.fleet``,
   clustered touches, one screen) through the gateway in 500-event requests,
   16 in flight, and waits until QueryHeatmapData counts all of them; uploads a 540x960
   backdrop.
3. Opens the explorer in headless Chromium (Debian's ``/usr/bin/chromium``)
   at grid 64 and flips the "Scroll" event-type box ``--changes`` times. Each
   change is timed in the page with ``performance.now()`` from the click to
   the next animation frame after the canvas was drawn
   (``window.__heatmap``), with the page's own split into RPC and drawing.
4. In the same run, the same QueryHeatmapData requests straight over gRPC
   (``--changes`` calls) and over the explorer's HTTP transport (urllib),
   in Connect's binary codec (what the page sends) and in proto3 JSON: the
   RPC's own latency.

Prints medians and p95 and one JSON line. Goal: the browser figure under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from PIL import Image
from playwright.sync_api import sync_playwright

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap_devtools.demo import mock_screenshot
from heatmap_devtools.fleet import Fleet, FleetSpec
from heatmap_devtools.loadgen import build_requests
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.process import free_port
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

CHROMIUM = "/usr/bin/chromium"
BATCH = 500
GRID = 64

TIMED_CHANGE = """async () => {
  const probe = window.__heatmap;
  const box = document.querySelector('input[name="etype"][value="SCROLL"]');
  const n = probe.drawn;
  const t0 = performance.now();
  box.click();
  const outcome = await probe.whenDrawn(n + 1);
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  return { ms: performance.now() - t0, rpcMs: outcome.rpcMs, drawMs: outcome.drawMs,
           kind: outcome.kind, total: outcome.totalA, width: outcome.width,
           height: outcome.height };
}"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "p95": round(pct(values, 0.95), 1)}


def load(dev: DevProcess, fleet: Fleet, events: int) -> int:
    """Every request sent, as fast as the gateway takes them (closed loop, 16 in flight)."""
    requests = build_requests(fleet, events // BATCH, BATCH)
    tokens = [mint_token(dev.secret, fleet.user_id(i)) for i in range(64)]
    return asyncio.run(_send_all(dev.target, requests, tokens))


async def _send_all(target: str, requests: list[bytes], tokens: list[str]) -> int:
    pending = iter(enumerate(requests))
    accepted = 0
    async with grpc.aio.insecure_channel(target) as channel:
        ingest = channel.unary_unary(
            "/heatmap.v1.HeatmapService/IngestTouchEvents",
            request_serializer=None,
            response_deserializer=heatmap_pb2.IngestTouchEventsResponse.FromString,
        )

        async def sender() -> None:
            nonlocal accepted
            for k, data in pending:
                md = (("authorization", f"Bearer {tokens[k % len(tokens)]}"),)
                for attempt in range(20):
                    try:
                        reply = await ingest(data, metadata=md, timeout=30)
                        break
                    except grpc.aio.AioRpcError as err:
                        # The same bytes again: the gateway counts a resend once.
                        if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 19:
                            raise
                        await asyncio.sleep(0.5)
                accepted += reply.ingested_count

        await asyncio.gather(*(sender() for _ in range(16)))
    return accepted


def wait_counted(
    stub: heatmap_pb2_grpc.HeatmapServiceStub, md: Any, screen: str, events: int
) -> None:
    request = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, grid_size=GRID)
    deadline = time.monotonic() + 600
    while (total := stub.QueryHeatmapData(request, metadata=md).total_count) < events:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {total} of {events} events counted after 10 min")
        time.sleep(0.5)


def grpc_latency(
    stub: heatmap_pb2_grpc.HeatmapServiceStub, md: Any, screen: str, calls: int
) -> list[float]:
    both = [
        heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, grid_size=GRID),
        heatmap_pb2.QueryHeatmapDataRequest(
            screen_name=screen,
            grid_size=GRID,
            event_types=[heatmap_pb2.TAP, heatmap_pb2.ACTION_CLICK],
        ),
    ]
    out = []
    for i in range(calls):
        started = time.perf_counter()
        stub.QueryHeatmapData(both[i % 2], metadata=md)
        out.append((time.perf_counter() - started) * 1000)
    return out


def http_latency(base: str, token: str, screen: str, calls: int, *, binary: bool) -> list[float]:
    """The same requests over the explorer's HTTP transport, proto3 JSON or binary."""
    both = [
        heatmap_pb2.QueryHeatmapDataRequest(
            screen_name=screen, grid_size=GRID, mode=heatmap_pb2.ALL_USERS
        ),
        heatmap_pb2.QueryHeatmapDataRequest(
            screen_name=screen,
            grid_size=GRID,
            mode=heatmap_pb2.ALL_USERS,
            event_types=[heatmap_pb2.TAP, heatmap_pb2.ACTION_CLICK],
        ),
    ]
    content_type = "application/proto" if binary else "application/json"
    out = []
    for i in range(calls):
        message = both[i % 2]
        body = (
            message.SerializeToString() if binary else json_format.MessageToJson(message).encode()
        )
        request = urllib.request.Request(
            f"{base}/heatmap.v1.HeatmapService/QueryHeatmapData",
            data=body,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
            method="POST",
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as reply:
            data = reply.read()
            if binary:
                heatmap_pb2.QueryHeatmapDataResponse.FromString(data)
            else:
                json.loads(data)
        out.append((time.perf_counter() - started) * 1000)
    return out


def browser_changes(url: str, changes: int) -> tuple[list[dict[str, Any]], bytes]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_function(
                "() => window.__heatmap && window.__heatmap.last"
                " && window.__heatmap.last.kind === 'drawn' && !window.__heatmap.busy"
            )
            for _ in range(4):  # warm-up: JIT, the backdrop decoded once
                page.evaluate(TIMED_CHANGE)
            runs = [page.evaluate(TIMED_CHANGE) for _ in range(changes)]
            return runs, page.screenshot()
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--screenshot", type=Path, help="save the page as PNG here")
    args = parser.parse_args(argv)
    if args.changes < 20:
        parser.error("--changes: at least 20")
    fleet = Fleet(FleetSpec(screens=1, users=20_000))
    screen = fleet.screen_names[0]
    with tempfile.TemporaryDirectory(prefix="bench-explorer-") as tmp:
        http_port = free_port()
        dev = DevProcess(Path(tmp) / "data", extra_env={"HEATMAP_HTTP_PORT": str(http_port)})
        dev.start()
        try:
            viewer = (("authorization", "Bearer " + mint_token(dev.secret, "analyst")),)
            with grpc.insecure_channel(
                dev.target, options=[("grpc.max_receive_message_length", 64 << 20)]
            ) as channel:
                stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
                started = time.monotonic()
                sent = load(dev, fleet, args.events)
                if sent != args.events:
                    raise SystemExit(f"the gateway accepted {sent} of {args.events} events")
                wait_counted(stub, viewer, screen, sent)
                print(f"{sent:,} events sent and counted in {time.monotonic() - started:.1f} s")
                manager = (
                    ("authorization", "Bearer " + mint_token(dev.secret, "d", [MANAGE_HEATMAPS])),
                )
                png = mock_screenshot(fleet, 0)
                with Image.open(io.BytesIO(png)) as image:
                    width, height = image.size
                stub.UploadScreenshot(
                    heatmap_pb2.UploadScreenshotRequest(
                        screen_name=screen, image_data=png, width=width, height=height
                    ),
                    metadata=manager,
                )
                token = mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])
                base = f"http://127.0.0.1:{http_port}"
                url = f"{base}/explorer/?screen={screen}&grid={GRID}#token={token}"
                runs, shot = browser_changes(url, args.changes)
                rpc = grpc_latency(stub, viewer, screen, args.changes)
                http_json = http_latency(base, token, screen, args.changes, binary=False)
                http_proto = http_latency(base, token, screen, args.changes, binary=True)
        finally:
            dev.stop()
    if args.screenshot:
        args.screenshot.write_bytes(shot)
    bad = [r for r in runs if r["kind"] != "drawn"]
    if bad:
        raise SystemExit(f"a change did not draw: {bad[0]}")
    result = {
        "events": args.events,
        "grid": GRID,
        "changes": args.changes,
        "view_px": [runs[0]["width"], runs[0]["height"]],
        "browser_change_to_drawn_ms": summary([r["ms"] for r in runs]),
        "browser_rpc_part_ms": summary([r["rpcMs"] for r in runs]),
        "browser_draw_part_ms": summary([r["drawMs"] for r in runs]),
        # Everything but the RPC: event, drawing, the next frame.
        "browser_beyond_rpc_ms": summary([r["ms"] - r["rpcMs"] for r in runs]),
        "grpc_query_ms": summary(rpc),
        "http_json_query_ms": summary(http_json),
        "http_proto_query_ms": summary(http_proto),
        "totals_seen": sorted({r["total"] for r in runs}),
    }
    b, g = result["browser_change_to_drawn_ms"], result["grpc_query_ms"]
    print(
        f"filter change -> heatmap drawn (browser): p50 {b['p50']} ms, p95 {b['p95']} ms "
        f"(RPC part p50 {result['browser_rpc_part_ms']['p50']} ms, "
        f"drawing p50 {result['browser_draw_part_ms']['p50']} ms, all but the RPC p50 "
        f"{result['browser_beyond_rpc_ms']['p50']} ms)\n"
        f"QueryHeatmapData over gRPC, same run: p50 {g['p50']} ms, p95 {g['p95']} ms; "
        f"over the explorer's HTTP transport: binary (what the page uses) p50 "
        f"{result['http_proto_query_ms']['p50']} ms, proto3 JSON p50 "
        f"{result['http_json_query_ms']['p50']} ms"
    )
    print(json.dumps(result))
    return 0 if b["p50"] < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
