"""Screenshots and rendering through the real gRPC server, on real SeaweedFS S3 and on disk."""

from __future__ import annotations

import asyncio
import io
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS
from heatmap.settings import ClickHouseSettings, S3Settings, Settings
from heatmap_cli.cli import _parser as cli_parser
from heatmap_devtools.localinfra.seaweedfs import SeaweedS3
from query_api import render_cli
from query_api.backdrops import backdrop_size
from query_api.colormap import VIRIDIS
from query_api.png_check import MAX_PNG_BYTES
from query_api.render import legend_box
from query_api.screenshots import Screenshot
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.integration.test_query_heatmap import H10, Ev, insert_events, md, query_api
from tests.unit.test_query_png_check import bomb_png, png_bytes

VIEW = md(VIEW_HEATMAPS)
MANAGE = md(MANAGE_HEATMAPS, VIEW_HEATMAPS, user="designer")


@pytest.fixture(params=["s3", "files"])
def settings(
    request: pytest.FixtureRequest,
    base_settings: Settings,
    clickhouse: ClickHouseSettings,
    tmp_path: Path,
) -> Settings:
    settings = replace(base_settings, clickhouse=clickhouse)
    if request.param == "s3":
        s3: S3Settings = request.getfixturevalue("s3_settings")
        return replace(settings, s3=s3)
    return replace(settings, screenshot_dir=tmp_path / "shots")


def upload(screen: str, data: bytes, width: int, height: int) -> pb.UploadScreenshotRequest:
    return pb.UploadScreenshotRequest(
        screen_name=screen, image_data=data, width=width, height=height
    )


async def test_upload_list_get_and_duplicates(settings: Settings) -> None:
    first, second = png_bytes(40, 30), png_bytes(41, 31)
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        a = (await stub.UploadScreenshot(upload("Home", first, 40, 30), metadata=MANAGE)).screenshot
        assert (a.screen_name, a.width, a.height, a.size_bytes) == ("Home", 40, 30, len(first))
        assert (a.content_type, a.uploaded_by) == ("image/png", "designer")
        assert len(a.sha256) == 64
        await asyncio.sleep(0.01)
        b = (
            await stub.UploadScreenshot(upload("Home", second, 41, 31), metadata=MANAGE)
        ).screenshot
        # Same bytes, same screen: the existing screenshot comes back.
        again = (
            await stub.UploadScreenshot(upload("Home", first, 40, 30), metadata=MANAGE)
        ).screenshot
        assert again.screenshot_id == a.screenshot_id
        assert again.uploaded_at == a.uploaded_at
        # Same bytes on another screen: a screenshot of its own.
        other = (
            await stub.UploadScreenshot(upload("Cart", first, 40, 30), metadata=MANAGE)
        ).screenshot
        assert other.screenshot_id not in (a.screenshot_id, b.screenshot_id)

        listed = (
            await stub.ListScreenshots(pb.ListScreenshotsRequest(screen_name="Home"), metadata=VIEW)
        ).screenshots
        assert [s.screenshot_id for s in listed] == [b.screenshot_id, a.screenshot_id]
        assert [
            s.screenshot_id
            for s in (
                await stub.ListScreenshots(
                    pb.ListScreenshotsRequest(screen_name="Nowhere"), metadata=VIEW
                )
            ).screenshots
        ] == []

        got = await stub.GetScreenshot(
            pb.GetScreenshotRequest(screenshot_id=a.screenshot_id), metadata=VIEW
        )
        assert got.image_data == first
        assert got.screenshot.sha256 == a.sha256
        if settings.s3.endpoint:
            assert got.screenshot.download_url.startswith(settings.s3.endpoint)
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(got.screenshot.download_url, timeout=10).read()
            )
            assert body == first
        else:
            assert got.screenshot.download_url == ""

        for shot_id, code in [
            ("0" * 32, grpc.StatusCode.NOT_FOUND),
            ("../../etc/passwd", grpc.StatusCode.NOT_FOUND),
            ("", grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetScreenshot(
                    pb.GetScreenshotRequest(screenshot_id=shot_id), metadata=VIEW
                )
            assert err.value.code() == code


async def test_every_bad_image_is_invalid_argument(settings: Settings) -> None:
    good = png_bytes(40, 30)
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30)).save(jpeg, format="JPEG")
    too_big = good + b"\x00" * (MAX_PNG_BYTES + 1 - len(good))  # under the gRPC limit
    cases = [
        (upload("Home", b"", 40, 30), "image_data"),
        (upload("Home", jpeg.getvalue(), 40, 30), "image_data"),
        (upload("Home", good[: len(good) // 2], 40, 30), "image_data"),
        (upload("Home", bomb_png(30_000, 30_000), 30_000, 30_000), "image_data"),
        (upload("Home", too_big, 40, 30), "image_data"),
        (upload("Home", good, 30, 40), "width"),
        (upload("", good, 40, 30), "screen_name"),
        (upload("x" * 201, good, 40, 30), "screen_name"),
    ]
    async with query_api(settings) as (channel, _, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        for request, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.UploadScreenshot(request, metadata=MANAGE)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in (err.value.details() or "")
        listed = await stub.ListScreenshots(
            pb.ListScreenshotsRequest(screen_name="Home"), metadata=VIEW
        )
        assert list(listed.screenshots) == []


def _hottest(png: bytes) -> tuple[int, int, Image.Image]:
    image = Image.open(io.BytesIO(png))
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    box = legend_box(image.width, image.height)
    if box is not None:
        rgb[box[1] : box[3] + 1, box[0] : box[2] + 1] = 0
    distance = np.abs(rgb - VIRIDIS[255].astype(np.int32)).sum(axis=2)
    y, x = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return int(x), int(y), image


async def test_render_over_newest_screenshot_and_blank_canvas(
    settings: Settings, tmp_path: Path
) -> None:
    # Hottest cell at 64-grid (40, 10); a weaker one elsewhere.
    events = [Ev("Home", "", 1, "u", H10, 40.5 / 64, 10.5 / 64) for _ in range(30)]
    events += [Ev("Home", "", 1, "u", H10, 0.2, 0.8) for _ in range(5)]
    events += [Ev("Blank", "", 1, "u", H10, 0.75, 0.25) for _ in range(3)]
    insert_events(settings.clickhouse, events)
    old = png_bytes(100, 100)
    backdrop = io.BytesIO()
    Image.new("RGB", (390, 844), (90, 90, 90)).save(backdrop, format="PNG")
    async with query_api(settings) as (channel, _, target):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        await stub.UploadScreenshot(upload("Home", old, 100, 100), metadata=MANAGE)
        await asyncio.sleep(0.01)
        newest = (
            await stub.UploadScreenshot(
                upload("Home", backdrop.getvalue(), 390, 844), metadata=MANAGE
            )
        ).screenshot
        query = pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=64)
        reply = await stub.RenderHeatmap(
            pb.RenderHeatmapRequest(query=query, width=300), metadata=VIEW
        )
        x, y, image = _hottest(reply.png)
        assert image.format == "PNG"
        assert image.size == (300, round(300 * 844 / 390)) == (reply.width, reply.height)
        assert (int(x // (reply.width / 64)), int(y // (reply.height / 64))) == (40, 10)
        assert image.convert("RGB").getpixel((5, reply.height // 2)) == (90, 90, 90)

        # Width 0: the backdrop's own width; a named (older) screenshot.
        named = await stub.RenderHeatmap(
            pb.RenderHeatmapRequest(query=query, screenshot_id=newest.screenshot_id), metadata=VIEW
        )
        assert (named.width, named.height) == (390, 844)

        blank = await stub.RenderHeatmap(
            pb.RenderHeatmapRequest(
                query=pb.QueryHeatmapDataRequest(screen_name="Blank", grid_size=8)
            ),
            metadata=VIEW,
        )
        x, y, image = _hottest(blank.png)
        # No screenshot: a phone's shape (9 : 19.5), as the explorer draws it.
        assert image.size == (512, 1109)
        assert (x // 64, int(y // (1109 / 8))) == (6, 2)

        for request, code in [
            (pb.RenderHeatmapRequest(query=query, width=-1), grpc.StatusCode.INVALID_ARGUMENT),
            (pb.RenderHeatmapRequest(query=query, width=10_000), grpc.StatusCode.INVALID_ARGUMENT),
            (
                pb.RenderHeatmapRequest(query=pb.QueryHeatmapDataRequest()),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                pb.RenderHeatmapRequest(query=query, screenshot_id="f" * 32),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.RenderHeatmap(request, metadata=VIEW)
            assert err.value.code() == code

        # `heatmap render` against the same server.
        out = tmp_path / "home.png"
        # Parsed by the real command line, so every option has its default.
        args = cli_parser().parse_args(
            ["render", "--target", target, "--screen", "Home", "--out", str(out), "--width", "200"]
        )
        assert await asyncio.to_thread(render_cli.run, settings, args) == 0
        with Image.open(out) as written:
            assert written.size == (200, round(200 * 844 / 390))


async def test_object_store_down_is_unavailable(
    base_settings: Settings, clickhouse: ClickHouseSettings, tmp_path: Path
) -> None:
    server = SeaweedS3(tmp_path / "private-s3")
    server.start()
    try:
        settings = replace(
            base_settings,
            clickhouse=clickhouse,
            s3=S3Settings(
                endpoint=server.endpoint,
                access_key=server.credentials.access_key,
                secret_key=server.credentials.secret_key,
                bucket="shots-down-test",
            ),
        )
        good = png_bytes(20, 20)
        async with query_api(settings) as (channel, _, _):
            stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
            shot = (
                await stub.UploadScreenshot(upload("Home", good, 20, 20), metadata=MANAGE)
            ).screenshot
            server.stop()
            for call in (
                stub.UploadScreenshot(upload("Home", png_bytes(21, 21), 21, 21), metadata=MANAGE),
                stub.ListScreenshots(pb.ListScreenshotsRequest(screen_name="Home"), metadata=VIEW),
                stub.GetScreenshot(
                    pb.GetScreenshotRequest(screenshot_id=shot.screenshot_id), metadata=VIEW
                ),
            ):
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 10
    finally:
        server.stop()


async def test_large_screenshot_renders_from_its_backdrop_and_downloads_as_uploaded(
    settings: Settings,
) -> None:
    # Wider than any render: the upload stores a downscaled backdrop beside it.
    big = io.BytesIO()
    pixels = np.zeros((400, 5000, 3), dtype=np.uint8)
    pixels[:, :2500] = (200, 30, 30)
    pixels[:, 2500:] = (30, 30, 200)
    Image.fromarray(pixels, "RGB").save(big, format="PNG")
    data = big.getvalue()
    async with query_api(settings) as (channel, service, _):
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        shot = (
            await stub.UploadScreenshot(upload("Wide", data, 5000, 400), metadata=MANAGE)
        ).screenshot
        stored = await asyncio.to_thread(service.store.read_backdrop, shot.screenshot_id)
        assert stored is not None
        with Image.open(io.BytesIO(stored)) as backdrop:
            assert backdrop.size == backdrop_size(5000, 400) == (4096, 328)
        got = await stub.GetScreenshot(
            pb.GetScreenshotRequest(screenshot_id=shot.screenshot_id), metadata=VIEW
        )
        assert got.image_data == data  # downloads keep the original
        query = pb.QueryHeatmapDataRequest(screen_name="Wide", grid_size=64)
        reply = await stub.RenderHeatmap(pb.RenderHeatmapRequest(query=query), metadata=VIEW)
        assert (reply.width, reply.height) == (4096, 328)
        image = Image.open(io.BytesIO(reply.png)).convert("RGB")
        assert image.getpixel((10, 10)) == (200, 30, 30)
        assert image.getpixel((3000, 10)) == (30, 30, 200)


async def test_screenshot_stored_before_backdrops_gets_one_at_first_render(
    settings: Settings,
) -> None:
    big = io.BytesIO()
    Image.new("RGB", (4500, 3000), (20, 160, 60)).save(big, format="PNG")
    data = big.getvalue()
    registry = CollectorRegistry()
    async with query_api(settings, registry=registry) as (channel, service, _):
        store = service.store
        # The layout an upload wrote before backdrops existed: original and JSON only.
        legacy = await asyncio.to_thread(
            store.put, Screenshot.new("Old", data, 4500, 3000, "designer"), data
        )
        assert await asyncio.to_thread(store.read_backdrop, legacy.screenshot_id) is None
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        request = pb.RenderHeatmapRequest(
            query=pb.QueryHeatmapDataRequest(screen_name="Old", grid_size=64), width=600
        )
        replies = await asyncio.gather(
            *(stub.RenderHeatmap(request, metadata=VIEW) for _ in range(6))
        )
        assert {(r.width, r.height) for r in replies} == {(600, 400)}
        pixel = Image.open(io.BytesIO(replies[0].png)).convert("RGB").getpixel((5, 5))
        assert pixel == (20, 160, 60)
        stored = await asyncio.to_thread(store.read_backdrop, legacy.screenshot_id)
        assert stored is not None
        with Image.open(io.BytesIO(stored)) as backdrop:
            assert backdrop.size == backdrop_size(4500, 3000)
        # Six concurrent renders, one derivation, stored once.
        writes = registry.get_sample_value(
            "heatmap_screenshot_store_seconds_count", {"op": "put_backdrop"}
        )
        assert writes == 1
        got = await stub.GetScreenshot(
            pb.GetScreenshotRequest(screenshot_id=legacy.screenshot_id), metadata=VIEW
        )
        assert got.image_data == data
