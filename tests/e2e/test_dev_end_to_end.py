"""The whole product through its public gRPC API only: ``heatmap dev`` as a user runs it.

One ``heatmap dev`` process (its own Kafka broker, chDB and screenshot files in
a temporary data dir) serves every test in this module; the last test
restarts it on the same data dir and checks that nothing was lost.
"""

from __future__ import annotations

import io
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

pytestmark = pytest.mark.slow

TAP, SCROLL, CLICK = heatmap_pb2.TAP, heatmap_pb2.SCROLL, heatmap_pb2.ACTION_CLICK
# An hour boundary two days ago (UTC): inside the gateway's accepted event age.
HOUR = (int(time.time()) - 2 * 86_400) // 3600 * 3600


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    process = DevProcess(tmp_path_factory.mktemp("dev") / "data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def stub(dev: DevProcess) -> Iterator[heatmap_pb2_grpc.HeatmapServiceStub]:
    with grpc.insecure_channel(
        dev.target,
        options=[
            ("grpc.max_send_message_length", 16 << 20),
            ("grpc.max_receive_message_length", 16 << 20),
        ],
    ) as channel:
        yield heatmap_pb2_grpc.HeatmapServiceStub(channel)


def auth(dev: DevProcess, user: str, *perms: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Bearer " + mint_token(dev.secret, user, list(perms))),)


def ts(seconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(seconds)
    return stamp


def event(
    screen: str,
    x: float,
    y: float,
    kind: heatmap_pb2.TouchEventType.ValueType,
    at: int,
    campaign: str = "",
) -> heatmap_pb2.TouchEvent:
    return heatmap_pb2.TouchEvent(
        screen_name=screen, x=x, y=y, event_type=kind, timestamp=ts(at), campaign_id=campaign
    )


def wait_total(
    stub: heatmap_pb2_grpc.HeatmapServiceStub,
    md: tuple[tuple[str, str], ...],
    request: heatmap_pb2.QueryHeatmapDataRequest,
    expected: int,
    timeout_s: float = 30.0,
) -> heatmap_pb2.QueryHeatmapDataResponse:
    deadline = time.monotonic() + timeout_s
    while True:
        reply: heatmap_pb2.QueryHeatmapDataResponse = stub.QueryHeatmapData(request, metadata=md)
        if reply.total_count >= expected or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


def test_ingest_then_query_exact_counts(
    dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub
) -> None:
    screen = f"Checkout-{uuid.uuid4().hex[:6]}"
    alice = [event(screen, 0.10, 0.10, TAP, HOUR + 5, "spring")] * 3 + [
        event(screen, 0.90, 0.95, CLICK, HOUR + 3599),
        event(screen, 0.5, 0.5, SCROLL, HOUR + 3600, "spring"),  # next hour
    ]
    bob = [event(screen, 0.10, 0.12, TAP, HOUR + 60)] * 2 + [event(screen, 1.0, 1.0, TAP, HOUR + 7)]
    for user, events in (("alice", alice), ("bob", bob)):
        reply = stub.IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(events=events), metadata=auth(dev, user)
        )
        assert reply.ingested_count == len(events)
    viewer = auth(dev, "analyst", VIEW_HEATMAPS)
    everything = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, grid_size=8)
    reply = wait_total(stub, viewer, everything, 8)
    assert reply.total_count == 8
    assert reply.grid_size == 8
    cells = {(round(p.x, 4), round(p.y, 4)): p.count for p in reply.data_points}
    # grid 8: x=0.10,y=0.10/0.12 -> cell (0,0); 0.9,0.95 -> (7,7); 1.0 -> (7,7); 0.5 -> (4,4)
    assert cells == {(0.0625, 0.0625): 5, (0.9375, 0.9375): 2, (0.5625, 0.5625): 1}

    taps_first_hour = heatmap_pb2.QueryHeatmapDataRequest(
        screen_name=screen,
        grid_size=8,
        event_types=[TAP],
        start_time=ts(HOUR),
        end_time=ts(HOUR + 3600),
    )
    assert stub.QueryHeatmapData(taps_first_hour, metadata=viewer).total_count == 6
    spring = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, campaign_id="spring")
    assert stub.QueryHeatmapData(spring, metadata=viewer).total_count == 4

    per_user = stub.QueryHeatmapData(
        heatmap_pb2.QueryHeatmapDataRequest(
            screen_name=screen, mode=heatmap_pb2.PER_USER, grid_size=8
        ),
        metadata=viewer,
    )
    assert [(u.user_id, u.touch_count) for u in per_user.user_touch_counts] == [
        ("alice", 5),
        ("bob", 3),
    ]
    by_user: Counter[str] = Counter()
    for point in per_user.data_points:
        by_user[point.user_id] += point.count
    assert by_user == {"alice": 5, "bob": 3}


def test_retried_batch_is_counted_once(
    dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub
) -> None:
    screen = f"Retry-{uuid.uuid4().hex[:6]}"
    request = heatmap_pb2.IngestTouchEventsRequest(
        events=[event(screen, 0.3, 0.3, TAP, HOUR)] * 4, batch_id="device-batch-1"
    )
    for _ in range(3):
        stub.IngestTouchEvents(request, metadata=auth(dev, "carol"))
    # A different user may use the same batch id: that is another batch.
    stub.IngestTouchEvents(request, metadata=auth(dev, "dave"))
    viewer = auth(dev, "analyst", VIEW_HEATMAPS)
    query = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen)
    assert wait_total(stub, viewer, query, 8).total_count == 8
    time.sleep(1.5)  # several flush intervals: nothing more arrives
    assert stub.QueryHeatmapData(query, metadata=viewer).total_count == 8


def test_fresh_events_are_visible_within_seconds(
    dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub
) -> None:
    screen = f"Fresh-{uuid.uuid4().hex[:6]}"
    now = int(time.time())
    started = time.monotonic()
    stub.IngestTouchEvents(
        heatmap_pb2.IngestTouchEventsRequest(events=[event(screen, 0.5, 0.5, TAP, now)]),
        metadata=auth(dev, "erin"),
    )
    reply = wait_total(
        stub,
        auth(dev, "analyst", VIEW_HEATMAPS),
        heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen),
        1,
        timeout_s=10,
    )
    assert reply.total_count == 1
    assert time.monotonic() - started < 5.0


def test_invalid_batch_is_rejected_with_field_paths(
    dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub
) -> None:
    events = [event("S", 0.5, 0.5, TAP, HOUR)] * 3 + [event("S", 1.5, 0.5, TAP, HOUR)]
    with pytest.raises(grpc.RpcError) as err:
        stub.IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(events=events), metadata=auth(dev, "frank")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    assert status is not None
    detail = error_details_pb2.BadRequest()
    status.details[0].Unpack(detail)
    assert [v.field for v in detail.field_violations] == ["events[3].x"]


def test_auth_failures(dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub) -> None:
    query = heatmap_pb2.QueryHeatmapDataRequest(screen_name="Home")
    with pytest.raises(grpc.RpcError) as missing:
        stub.QueryHeatmapData(query)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as denied:
        stub.QueryHeatmapData(query, metadata=auth(dev, "device-only"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as upload:
        stub.UploadScreenshot(
            heatmap_pb2.UploadScreenshotRequest(screen_name="Home"),
            metadata=auth(dev, "viewer", VIEW_HEATMAPS),
        )
    assert upload.value.code() == grpc.StatusCode.PERMISSION_DENIED


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 210, 220)).save(out, format="PNG")
    return out.getvalue()


def test_screenshots_and_rendering(
    dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub
) -> None:
    screen = "Gallery"
    manager = auth(dev, "designer", VIEW_HEATMAPS, MANAGE_HEATMAPS)
    image = png(300, 600)
    first = stub.UploadScreenshot(
        heatmap_pb2.UploadScreenshotRequest(
            screen_name=screen, image_data=image, width=300, height=600
        ),
        metadata=manager,
    ).screenshot
    again = stub.UploadScreenshot(
        heatmap_pb2.UploadScreenshotRequest(
            screen_name=screen, image_data=image, width=300, height=600
        ),
        metadata=manager,
    ).screenshot
    assert again.screenshot_id == first.screenshot_id
    assert first.uploaded_by == "designer"
    listed = stub.ListScreenshots(
        heatmap_pb2.ListScreenshotsRequest(screen_name=screen), metadata=manager
    )
    assert [s.screenshot_id for s in listed.screenshots] == [first.screenshot_id]
    got = stub.GetScreenshot(
        heatmap_pb2.GetScreenshotRequest(screenshot_id=first.screenshot_id), metadata=manager
    )
    assert got.image_data == image

    stub.IngestTouchEvents(
        heatmap_pb2.IngestTouchEventsRequest(events=[event(screen, 0.8, 0.2, TAP, HOUR)] * 20),
        metadata=auth(dev, "gina"),
    )
    wait_total(stub, manager, heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen), 20)
    rendered = stub.RenderHeatmap(
        heatmap_pb2.RenderHeatmapRequest(
            query=heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, grid_size=32), width=150
        ),
        metadata=manager,
    )
    picture = Image.open(io.BytesIO(rendered.png))
    assert picture.format == "PNG"
    assert picture.size == (150, 300) == (rendered.width, rendered.height)


def test_restart_keeps_all_data(dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub) -> None:
    screen = f"Persist-{uuid.uuid4().hex[:6]}"
    stub.IngestTouchEvents(
        heatmap_pb2.IngestTouchEventsRequest(events=[event(screen, 0.2, 0.7, SCROLL, HOUR)] * 7),
        metadata=auth(dev, "henry"),
    )
    viewer = auth(dev, "analyst", VIEW_HEATMAPS)
    query = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen)
    assert wait_total(stub, viewer, query, 7).total_count == 7
    shots_before = stub.ListScreenshots(
        heatmap_pb2.ListScreenshotsRequest(screen_name="Gallery"), metadata=viewer
    )

    assert dev.stop() == 0
    dev.start()
    with grpc.insecure_channel(dev.target) as channel:
        fresh = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        viewer = auth(dev, "analyst", VIEW_HEATMAPS)  # same secret: kept in the data dir
        assert fresh.QueryHeatmapData(query, metadata=viewer).total_count == 7
        shots_after = fresh.ListScreenshots(
            heatmap_pb2.ListScreenshotsRequest(screen_name="Gallery"), metadata=viewer
        )
        assert list(shots_after.screenshots) == list(shots_before.screenshots)
        # ...and it keeps ingesting after the restart.
        fresh.IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(events=[event(screen, 0.2, 0.7, SCROLL, HOUR)]),
            metadata=auth(dev, "henry"),
        )
        assert wait_total(fresh, viewer, query, 8).total_count == 8


def test_data_dir_holds_everything(dev: DevProcess) -> None:
    names = {p.name for p in Path(dev.data_dir).iterdir()}
    assert {"chdb", "kafka", "screenshots", "dev-jwt-secret"} <= names
