"""``heatmap demo``: sample screenshots, a burst of fleet load, rendered heatmaps.

Talks to a running ``heatmap dev`` (or any deployment) through the public
gRPC API only: uploads a mock screenshot per screen (buttons drawn where the
synthetic fleet taps), sends load with ``heatmap_devtools.loadgen``, waits until the
events are queryable, then renders a heatmap PNG per screen into ``--out``.
A failed call propagates as ``grpc.RpcError``: the CLI turns it into one
line (a token the server rejects: which ``--data-dir`` to pass).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import grpc
from PIL import Image, ImageDraw

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap.settings import Settings, SettingsError
from heatmap_devtools.fleet import Fleet, FleetSpec
from heatmap_devtools.loadgen import LoadReport, build_requests, print_report, send_load
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

WIDTH, HEIGHT = 540, 960


# However slow the machine, the demo data set is sent whole unless this runs out.
DEMO_SEND_LIMIT_S = 300.0


def mock_screenshot(fleet: Fleet, screen: int) -> bytes:
    """A phone-screen mock-up with the screen's buttons where the fleet taps them."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (246, 247, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, WIDTH, 90), fill=(48, 63, 159))
    draw.text((24, 36), fleet.screen_names[screen], fill=(255, 255, 255))
    for row in range(6):
        top = 130 + row * 130
        draw.rounded_rectangle(
            (24, top, WIDTH - 24, top + 100), 14, fill=(255, 255, 255), outline=(220, 222, 230)
        )
    for i, (bx, by) in enumerate(fleet.buttons[screen]):
        cx, cy = bx * WIDTH, by * HEIGHT
        draw.rounded_rectangle((cx - 60, cy - 22, cx + 60, cy + 22), 20, fill=(0, 150, 136))
        draw.text((cx - 30, cy - 6), f"Button {i + 1}", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def run(settings: Settings, args: argparse.Namespace) -> int:
    secret = args.token_secret or settings.auth.jwt_secret
    secret_file = Path(args.data_dir) / "dev-jwt-secret"
    if not secret and secret_file.exists():
        secret = secret_file.read_text().strip()
    if not secret:
        raise SettingsError(
            f"no JWT secret: {secret_file} does not exist; pass --data-dir of the running "
            "heatmap dev (or --token-secret, or set HEATMAP_JWT_SECRET)"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_demo(args.target, secret, out, args.events))


def demo_fleet() -> Fleet:
    return Fleet(FleetSpec(users=500, screens=6, seed=11))


def analyst_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    token = mint_token(secret, "demo-analyst", [VIEW_HEATMAPS, MANAGE_HEATMAPS])
    return (("authorization", "Bearer " + token),)


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.max_receive_message_length", 16 << 20),
    ]


async def load_demo_data(
    target: str, secret: str, events: int, *, quiet: bool = False
) -> LoadReport:
    """Upload a mock screenshot per demo screen and send ``events`` fleet events
    through the public API; the report says what was accepted. ``heatmap dev``
    calls this on a new data dir, so its explorer has something to show."""
    fleet = demo_fleet()
    analyst = analyst_metadata(secret)
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for screen in range(len(fleet.screen_names)):
            png = mock_screenshot(fleet, screen)
            reply = await stub.UploadScreenshot(
                heatmap_pb2.UploadScreenshotRequest(
                    screen_name=fleet.screen_names[screen],
                    image_data=png,
                    width=WIDTH,
                    height=HEIGHT,
                ),
                metadata=analyst,
            )
            if not quiet:
                print(f"uploaded {fleet.screen_names[screen]}: {reply.screenshot.screenshot_id}")
    batch = 500
    requests = build_requests(fleet, max(1, events // batch), batch)
    tokens = [mint_token(secret, fleet.user_id(i), []) for i in range(200)]
    return await send_load(
        target,
        requests,
        tokens,
        rate=50_000,
        duration_s=events / 50_000,
        batch_size=batch,
        concurrency=8,
        progress=False if quiet else None,
        stop_after_s=DEMO_SEND_LIMIT_S,  # a slow machine still gets every screen
    )


async def _demo(target: str, secret: str, out: Path, events: int) -> int:
    fleet = demo_fleet()
    analyst = analyst_metadata(secret)
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        before = await _total(stub, analyst, fleet.screen_names)
        report = await load_demo_data(target, secret, events)
        print_report(report)
        if not report.accepted_events:
            print("no events were accepted (see the summary above)", file=sys.stderr)
            return 1

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await _total(stub, analyst, fleet.screen_names) - before >= report.accepted_events:
                break
            await asyncio.sleep(0.25)
        for name in fleet.screen_names:
            reply = await stub.RenderHeatmap(
                heatmap_pb2.RenderHeatmapRequest(
                    query=heatmap_pb2.QueryHeatmapDataRequest(screen_name=name, grid_size=64),
                    width=WIDTH,
                ),
                metadata=analyst,
            )
            path = out / f"heatmap-{name}.png"
            path.write_bytes(reply.png)
            print(f"rendered {path} ({reply.width}x{reply.height})")
    return 0


async def _total(
    stub: heatmap_pb2_grpc.HeatmapServiceStub,
    metadata: tuple[tuple[str, str], ...],
    screens: list[str],
) -> int:
    total = 0
    for name in screens:
        reply = await stub.QueryHeatmapData(
            heatmap_pb2.QueryHeatmapDataRequest(screen_name=name, grid_size=8), metadata=metadata
        )
        total += reply.total_count
    return total
