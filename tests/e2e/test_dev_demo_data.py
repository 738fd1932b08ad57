"""A newcomer's first ``heatmap dev``: a new data dir gets the demo data set,
so the printed explorer URL opens on heatmaps; a restart does not load it again."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import sync_playwright

from heatmap.auth import VIEW_HEATMAPS, mint_token
from heatmap_cli.dev import DEMO_EVENTS, DEMO_MARKER
from heatmap_devtools.demo import demo_fleet
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.process import free_port
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; deploy/local/install-test-tools.sh installs it


def screens(dev: DevProcess) -> dict[str, tuple[int, bool]]:
    view = (("authorization", "Bearer " + mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])),)
    with grpc.insecure_channel(dev.target) as channel:
        reply = heatmap_pb2_grpc.HeatmapServiceStub(channel).ListScreens(
            heatmap_pb2.ListScreensRequest(), metadata=view, timeout=10
        )
    return {s.screen_name: (s.event_count, s.has_screenshot) for s in reply.screens}


def wait_for_total(
    dev: DevProcess, total: int, timeout_s: float = 180
) -> dict[str, tuple[int, bool]]:
    deadline = time.monotonic() + timeout_s
    seen: dict[str, tuple[int, bool]] = {}
    while time.monotonic() < deadline:
        seen = screens(dev)
        if sum(n for n, _ in seen.values()) >= total:
            return seen
        time.sleep(1)
    raise AssertionError(f"demo data not in after {timeout_s}s: {seen}\n{dev.log()}")


def test_new_data_dir_opens_on_the_demo_data(tmp_path: Path) -> None:
    http_port = free_port()
    dev = DevProcess(tmp_path / "data", {"HEATMAP_HTTP_PORT": str(http_port)}, demo=True)
    dev.start()
    try:
        found = wait_for_total(dev, DEMO_EVENTS)
        names = set(demo_fleet().screen_names)
        assert set(found) == names, found
        assert sum(n for n, _ in found.values()) == DEMO_EVENTS
        assert all(has_shot for _, has_shot in found.values())
        # The URL the banner prints serves the page the newcomer opens.
        match = re.search(r"explorer:\s+((http://\S+/explorer/)#token=\S+)", dev.run_log())
        assert match, dev.log()
        with urllib.request.urlopen(match.group(2), timeout=10) as page:
            assert page.status == 200
            assert b"Heatmap explorer" in page.read()
        assert (tmp_path / "data" / DEMO_MARKER).read_text().strip() == str(DEMO_EVENTS)
        # In a real browser, the banner's URL (token in the fragment) opens on
        # the busiest screen's heatmap, not on an empty frame.
        busiest = max(found, key=lambda name: found[name][0])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(match.group(1))
                page.wait_for_function(
                    "() => window.__heatmap && window.__heatmap.drawn > 0"
                    " && !window.__heatmap.busy && window.__heatmap.last.kind === 'drawn'"
                )
                assert page.locator("#view-title").inner_text() == busiest
                assert page.get_attribute("#view-a", "data-total") == str(found[busiest][0])
            finally:
                browser.close()
    finally:
        dev.stop()

    # Restarted on the same data dir: the data is kept and not loaded twice.
    dev.start()
    try:
        time.sleep(5)  # what a second load would have sent by now
        again = screens(dev)
        assert sum(n for n, _ in again.values()) == DEMO_EVENTS
        assert "demo data: loading" not in dev.run_log()
    finally:
        dev.stop()
