"""The explorer's HTTP port over real HTTP: Connect JSON and binary calls answer
exactly what gRPC answers, with the same auth; the page's files are served.

One real query service (chDB + SeaweedFS S3) runs behind ``heatmap.serve``
with its gRPC port and the ``ExplorerHttp`` component on the same event loop;
requests go over loopback TCP with aiohttp.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import io
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from PIL import Image
from prometheus_client import CollectorRegistry

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap.settings import ClickHouseSettings, S3Settings, Settings
from query_api.app import QueryService
from query_api.explorer.http_app import STATIC_DIR
from query_api.explorer.server import ExplorerHttp
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc
from tests.conftest import TEST_JWT_SECRET
from tests.grpc_support import serving
from tests.integration.test_query_heatmap import H10, Ev, insert_events, ts

SERVICE = "/heatmap.v1.HeatmapService/"
MAX_BODY = 1 << 20


def bearer(*permissions: str, ttl_s: float = 600, secret: str = TEST_JWT_SECRET) -> str:
    return f"Bearer {mint_token(secret, 'analyst', permissions, ttl_s)}"


VIEW = bearer(VIEW_HEATMAPS)
BOTH = bearer(VIEW_HEATMAPS, MANAGE_HEATMAPS)


@dataclass
class Stack:
    stub: heatmap_pb2_grpc.HeatmapServiceStub
    http: aiohttp.ClientSession
    base: str

    async def connect_json(
        self, method: str, body: Any, auth: str | None = VIEW, **headers: str
    ) -> tuple[int, Any, Any]:
        if auth is not None:
            headers["Authorization"] = auth
        async with self.http.post(
            self.base + SERVICE + method,
            data=json.dumps(body),
            headers={"Content-Type": "application/json", **headers},
        ) as r:
            return r.status, await r.json(content_type=None), r.headers

    async def connect_proto(self, method: str, request: Message, auth: str = VIEW) -> bytes:
        async with self.http.post(
            self.base + SERVICE + method,
            data=request.SerializeToString(),
            headers={"Content-Type": "application/proto", "Authorization": auth},
        ) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"] == "application/proto"
            return await r.read()


@contextlib.asynccontextmanager
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    registry = CollectorRegistry()
    service = QueryService(settings, registry)
    http = ExplorerHttp(
        service,
        settings.auth,
        registry,
        host="127.0.0.1",
        port=0,
        max_body_bytes=MAX_BODY,
        shutdown_grace_s=2,
    )
    async with (
        serving(settings, [service, http], registry) as port,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        aiohttp.ClientSession() as session,
    ):
        yield Stack(
            heatmap_pb2_grpc.HeatmapServiceStub(channel),
            session,
            f"http://127.0.0.1:{http.bound_port}",
        )
    # Stopped with the server: the port is free again.
    with contextlib.closing(socket.socket()) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", http.bound_port))


@pytest.fixture
def settings(
    base_settings: Settings, clickhouse: ClickHouseSettings, s3_settings: S3Settings
) -> Settings:
    return replace(base_settings, clickhouse=clickhouse, s3=s3_settings)


def _events() -> list[Ev]:
    out = []
    for i in range(40):
        out.append(Ev("Home", "c1" if i % 3 else "", 1 + i % 3, f"u{i % 5}", H10, i / 40, 0.25))
    out += [Ev("Cart", "", 1, "u1", H10 + dt.timedelta(hours=1), 0.5, 0.5) for _ in range(7)]
    return out


def _png(w: int, h: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (30, 90, 150)).save(out, format="PNG")
    return out.getvalue()


def _json_of(message: Message) -> Any:
    """proto3 JSON as the Connect protocol defines it (int64 as strings, lowerCamel)."""
    return json.loads(json_format.MessageToJson(message))


def _unsigned(message: Message) -> Message:
    """The message with each screenshot's presigned URL cut to its object path:
    the signature carries the second it was made, so two calls straddling a
    second differ there and nowhere else."""
    shots: list[pb.ScreenScreenshot] = []
    if isinstance(message, pb.ListScreenshotsResponse):
        shots = list(message.screenshots)
    elif isinstance(message, pb.GetScreenshotResponse):
        shots = [message.screenshot]
    for shot in shots:
        if shot.download_url:
            assert "X-Amz-Signature=" in shot.download_url
            shot.download_url = urlsplit(shot.download_url).path
    return message


async def test_connect_json_and_binary_equal_grpc(settings: Settings) -> None:
    insert_events(settings.clickhouse, _events())
    async with stack(settings) as s:
        upload = pb.UploadScreenshotRequest(
            screen_name="Home", image_data=_png(39, 84), width=39, height=84
        )
        shot = (
            await s.stub.UploadScreenshot(upload, metadata=(("authorization", BOTH),))
        ).screenshot
        md = (("authorization", VIEW),)
        requests: list[tuple[str, Message, Any]] = [
            (
                "QueryHeatmapData",
                pb.QueryHeatmapDataRequest(screen_name="Home", grid_size=16),
                s.stub.QueryHeatmapData,
            ),
            (
                "QueryHeatmapData",
                pb.QueryHeatmapDataRequest(
                    screen_name="Home",
                    mode=pb.PER_USER,
                    top_users=2,
                    campaign_id="c1",
                    start_time=ts(H10),
                    end_time=ts(H10 + dt.timedelta(hours=1)),
                    event_types=[pb.TAP, pb.SCROLL],
                ),
                s.stub.QueryHeatmapData,
            ),
            ("ListScreens", pb.ListScreensRequest(), s.stub.ListScreens),
            (
                "ListScreenshots",
                pb.ListScreenshotsRequest(screen_name="Home"),
                s.stub.ListScreenshots,
            ),
            (
                "GetScreenshot",
                pb.GetScreenshotRequest(screenshot_id=shot.screenshot_id),
                s.stub.GetScreenshot,
            ),
            (
                "RenderHeatmap",
                pb.RenderHeatmapRequest(
                    query=pb.QueryHeatmapDataRequest(screen_name="Home"), width=64
                ),
                s.stub.RenderHeatmap,
            ),
        ]
        for method, request, grpc_call in requests:
            via_grpc = _unsigned(await grpc_call(request, metadata=md))
            status, body, headers = await s.connect_json(method, _json_of(request))
            assert status == 200, body
            assert headers["Content-Type"] == "application/json"
            parsed = _unsigned(json_format.ParseDict(body, type(via_grpc)()))
            assert _json_of(parsed) == _json_of(via_grpc), method
            assert parsed == via_grpc
            raw = await s.connect_proto(method, request)
            assert _unsigned(type(via_grpc).FromString(raw)) == via_grpc, method
        # The screens list is what the data says: Home with 40 and a screenshot, Cart 7 without.
        status, body, _ = await s.connect_json("ListScreens", {})
        assert [
            (x["screenName"], x["eventCount"], x.get("hasScreenshot", False))
            for x in body["screens"]
        ] == [
            ("Home", "40", True),
            ("Cart", "7", False),
        ]
        # The PNG of RenderHeatmap arrives base64 in JSON, decodable as the PNG gRPC sends.
        status, body, _ = await s.connect_json(
            "RenderHeatmap", {"query": {"screenName": "Home"}, "width": 64}
        )
        png = base64.b64decode(body["png"])
        assert png.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(png)).size == (64, 138)


async def test_auth_and_errors_have_connect_codes(settings: Settings) -> None:
    async with stack(settings) as s:
        request = {"screenName": "Home"}
        cases = [
            (None, 401, "unauthenticated"),
            ("Bearer not-a-jwt", 401, "unauthenticated"),
            (bearer(VIEW_HEATMAPS, ttl_s=-60), 401, "unauthenticated"),
            (
                bearer(VIEW_HEATMAPS, secret="another-secret-of-32-bytes-or-more!!"),
                401,
                "unauthenticated",
            ),
            ("Basic dXNlcjpwYXNz", 401, "unauthenticated"),
            (bearer(MANAGE_HEATMAPS), 403, "permission_denied"),
        ]
        for auth, http_status, code in cases:
            status, body, _ = await s.connect_json("QueryHeatmapData", request, auth=auth)
            assert (status, body["code"]) == (http_status, code), auth
            assert 0 < len(body["message"]) < 300
        _, body, _ = await s.connect_json(
            "QueryHeatmapData", request, auth=bearer(VIEW_HEATMAPS, ttl_s=-60)
        )
        assert body["message"] == "token expired"
        # The same check on gRPC gives the same code and message.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.stub.QueryHeatmapData(
                pb.QueryHeatmapDataRequest(screen_name="Home"),
                metadata=(("authorization", bearer(VIEW_HEATMAPS, ttl_s=-60)),),
            )
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "token expired",
        )
        # UploadScreenshot needs MANAGE_HEATMAPS over HTTP too.
        status, body, _ = await s.connect_json(
            "UploadScreenshot", {"screenName": "Home", "imageData": "", "width": 1, "height": 1}
        )
        assert (status, body["code"]) == (403, "permission_denied")
        # INVALID_ARGUMENT carries the same BadRequest detail as gRPC.
        status, body, _ = await s.connect_json(
            "QueryHeatmapData", {"screenName": "", "gridSize": 3}
        )
        assert (status, body["code"]) == (400, "invalid_argument")
        [detail] = body["details"]
        assert detail["type"] == "google.rpc.BadRequest"
        bad = error_details_pb2.BadRequest.FromString(base64.b64decode(detail["value"] + "=="))
        assert [v.field for v in bad.field_violations] == ["screen_name", "grid_size"]
        # Not an RPC of the service (the gateway's ingest is not served here), bad JSON, too big.
        status, _, _ = await s.connect_json("IngestTouchEvents", {"events": []})
        assert status == 404
        status, _, _ = await s.connect_json("NoSuchMethod", {})
        assert status == 404
        async with s.http.post(
            s.base + SERVICE + "QueryHeatmapData",
            data=b"{not json",
            headers={"Content-Type": "application/json", "Authorization": VIEW},
        ) as r:
            assert r.status == 400
            assert (await r.json(content_type=None))["code"] == "invalid_argument"
        big = json.dumps({"screenName": "x" * (MAX_BODY + 10)})
        async with s.http.post(
            s.base + SERVICE + "QueryHeatmapData",
            data=big,
            headers={"Content-Type": "application/json", "Authorization": VIEW},
        ) as r:
            assert r.status == 429
            assert (await r.json(content_type=None))["code"] == "resource_exhausted"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: cut while reading
            for _ in range(40):
                yield b" " * 65536

        async with s.http.post(
            s.base + SERVICE + "QueryHeatmapData",
            data=chunks(),
            headers={"Content-Type": "application/json", "Authorization": VIEW},
        ) as r:
            assert r.status == 429


async def test_static_files_and_redirects(settings: Settings) -> None:
    async with stack(settings) as s:
        async with s.http.get(s.base + "/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (308, "/explorer/")
        async with s.http.get(s.base + "/explorer/") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "text/html; charset=utf-8"
            assert r.headers["Cache-Control"] == "no-cache"
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            body = await r.read()
            assert body == (STATIC_DIR / "index.html").read_bytes()
            etag = r.headers["ETag"]
        async with s.http.get(
            s.base + "/explorer/index.html", headers={"If-None-Match": etag}
        ) as r:
            assert r.status == 304
        kinds = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
        served = 0
        for path in sorted(STATIC_DIR.rglob("*")):
            if path.suffix in kinds and path.is_file():
                rel = path.relative_to(STATIC_DIR).as_posix()
                async with s.http.get(f"{s.base}/explorer/{rel}") as r:
                    assert r.status == 200, rel
                    assert r.headers["Content-Type"] == kinds[path.suffix]
                    assert await r.read() == path.read_bytes()
                served += 1
        assert served, "the page has scripts or styles"
        for bad in (
            "/explorer/../app.py",
            "/explorer/%2e%2e/app.py",
            "/explorer/.hidden",
            "/explorer/nope.js",
            "/explorer/__init__.py",
            "/other",
        ):
            async with s.http.get(s.base + bad) as r:
                assert r.status == 404, bad
        async with s.http.post(s.base + "/explorer/index.html") as r:
            assert r.status == 405
        async with s.http.get(s.base + "/healthz") as r:
            assert r.status == 200


def test_static_folder_is_package_data() -> None:
    assert Path(__file__).resolve().parents[2] / "query_api/explorer/static" == STATIC_DIR
    assert (STATIC_DIR / "index.html").is_file()
