"""The explorer page in a real headless Chromium against a real ``heatmap dev``.

One ``heatmap dev`` (Kafka, chDB, screenshot files) serves the module; the
touches sent are a small table whose answers each test computes from that
table (``expected``), so a filter that counts wrongly fails. The page is the
one the package ships, served by the dev process's HTTP port. Screenshots of
every test land in ``test-artifacts/explorer/``.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, Page, sync_playwright

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap_devtools.localinfra.dev_process import DevProcess
from heatmap_devtools.localinfra.process import free_port
from query_api.render import legend_box
from schemas.heatmap.v1 import heatmap_pb2, heatmap_pb2_grpc

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "explorer"
GRID = 16
SHOT_W, SHOT_H = 360, 780
OLD_SHOT = (480, 640)
# An hour boundary two days ago (UTC): inside the gateway's accepted event age.
HOUR = (int(time.time()) - 2 * 86_400) // 3600 * 3600
KINDS = {
    "TAP": heatmap_pb2.TAP,
    "SCROLL": heatmap_pb2.SCROLL,
    "ACTION_CLICK": heatmap_pb2.ACTION_CLICK,
}

if not CHROMIUM.exists():  # pragma: no cover - the CI installs it
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


@dataclass(frozen=True)
class Touches:
    """``n`` touches by ``user`` in one grid-16 cell, one kind, one hour, one campaign."""

    user: str
    cell: tuple[int, int]
    kind: str
    hour: int  # hours after HOUR
    campaign: str
    n: int


TABLE = (
    Touches("alice", (3, 10), "TAP", 0, "spring", 40),
    Touches("bob", (12, 4), "SCROLL", 1, "autumn", 12),
    Touches("carol", (8, 14), "ACTION_CLICK", 0, "", 7),
    Touches("dave", (1, 1), "TAP", 2, "spring", 3),
    Touches("bob", (3, 10), "TAP", 2, "", 5),
    Touches("erin", (12, 4), "SCROLL", 0, "autumn", 9),
)


def expected(
    *,
    campaign: str = "",
    kinds: tuple[str, ...] = (),
    hours: tuple[int, int] | None = None,
    user: str = "",
) -> int:
    return sum(
        t.n
        for t in TABLE
        if (not campaign or t.campaign == campaign)
        and (not kinds or t.kind in kinds)
        and (hours is None or hours[0] <= t.hour < hours[1])
        and (not user or t.user == user)
    )


def user_ranking() -> list[tuple[str, int]]:
    totals: Counter[str] = Counter()
    for t in TABLE:
        totals[t.user] += t.n
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def hottest_cell() -> tuple[int, int]:
    cells: Counter[tuple[int, int]] = Counter()
    for t in TABLE:
        cells[t.cell] += t.n
    return cells.most_common(1)[0][0]


def local(hour: int) -> str:
    """A datetime-local value (UTC) for HOUR + ``hour`` hours."""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(HOUR + hour * 3600))


def backdrop_png(width: int = SHOT_W, height: int = SHOT_H) -> bytes:
    image = Image.new("RGB", (width, height), (240, 242, 246))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, SHOT_W, 70), fill=(48, 63, 159))
    for row in range(5):
        top = 110 + row * 130
        draw.rounded_rectangle((20, top, width - 20, top + 100), 12, fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# ---------------------------------------------------------------- fixtures


@dataclass
class Explorer:
    dev: DevProcess
    base: str  # http://127.0.0.1:<port>/explorer/
    banner_url: str  # as heatmap dev printed it, with the dev token
    screen: str
    token: str

    def url(self, query: str = "", token: str | None = None) -> str:
        fragment = f"#token={quote(self.token if token is None else token)}"
        return f"{self.base}?screen={quote(self.screen)}&grid={GRID}{query}{fragment}"


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Explorer]:
    dev = DevProcess(
        tmp_path_factory.mktemp("explorer") / "data",
        extra_env={"HEATMAP_HTTP_PORT": str(free_port())},
    )
    dev.start()
    try:
        found = re.search(r"(http://127\.0\.0\.1:\d+/explorer/)#token=(\S+)", dev.run_log())
        assert found, f"heatmap dev printed no explorer URL:\n{dev.run_log()}"
        screen = f"Checkout-{uuid.uuid4().hex[:6]}"
        with grpc.insecure_channel(dev.target) as channel:
            stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
            _send_table(dev, stub, screen)
        yield Explorer(
            dev=dev,
            base=found.group(1),
            banner_url=found.group(0),
            screen=screen,
            token=mint_token(dev.secret, "analyst", [VIEW_HEATMAPS]),
        )
    finally:
        dev.stop()


def _send_table(dev: DevProcess, stub: heatmap_pb2_grpc.HeatmapServiceStub, screen: str) -> None:
    for i, t in enumerate(TABLE):
        at = Timestamp()
        at.FromSeconds(HOUR + t.hour * 3600 + 60)
        event = heatmap_pb2.TouchEvent(
            screen_name=screen,
            x=(t.cell[0] + 0.5) / GRID,
            y=(t.cell[1] + 0.5) / GRID,
            event_type=KINDS[t.kind],
            timestamp=at,
            campaign_id=t.campaign,
        )
        user_md = (("authorization", "Bearer " + mint_token(dev.secret, t.user)),)
        stub.IngestTouchEvents(
            heatmap_pb2.IngestTouchEventsRequest(events=[event] * t.n, batch_id=f"table-{i}"),
            metadata=user_md,
        )
    manager = (
        ("authorization", "Bearer " + mint_token(dev.secret, "designer", [MANAGE_HEATMAPS])),
    )
    # An older screenshot of another shape first; the newest is the default backdrop.
    for width, height in (OLD_SHOT, (SHOT_W, SHOT_H)):
        stub.UploadScreenshot(
            heatmap_pb2.UploadScreenshotRequest(
                screen_name=screen,
                image_data=backdrop_png(width, height),
                width=width,
                height=height,
            ),
            metadata=manager,
        )
        time.sleep(1.1)  # distinct upload times
    viewer = (("authorization", "Bearer " + mint_token(dev.secret, "analyst", [VIEW_HEATMAPS])),)
    query = heatmap_pb2.QueryHeatmapDataRequest(screen_name=screen, grid_size=GRID)
    deadline = time.monotonic() + 60
    while stub.QueryHeatmapData(query, metadata=viewer).total_count < expected():
        assert time.monotonic() < deadline, "the table's touches never became queryable"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[..., Page]]:
    contexts = []
    pages: list[Page] = []
    errors: list[str] = []

    def opener(url: str, width: int = 1280, height: int = 900) -> Page:
        context = browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        pages.append(page)
        return page

    try:
        yield opener
        for i, page in enumerate(pages):
            if not page.is_closed():
                page.screenshot(path=ARTIFACTS / f"{request.node.name}-{i}.png", full_page=True)
        assert not errors, f"errors in the page: {errors}"
    finally:
        for context in contexts:
            context.close()


# ---------------------------------------------------------------- page helpers


def settle(page: Page, after: int = 0) -> dict[str, Any]:
    """Waits for the view to finish a refresh numbered above ``after``; its outcome."""
    page.wait_for_function(
        f"() => window.__heatmap && window.__heatmap.drawn > {after} && !window.__heatmap.busy"
    )
    outcome: dict[str, Any] = page.evaluate("() => window.__heatmap.last")
    return outcome


def change(page: Page, action: Callable[[], object]) -> dict[str, Any]:
    before = int(page.evaluate("() => window.__heatmap.drawn"))
    action()
    return settle(page, before)


def shown_total(page: Page, view: str = "a") -> int:
    return int(page.get_attribute(f"#view-{view}", "data-total") or -1)


def hottest_pixel(page: Page, canvas: str = "#heat-a") -> tuple[int, int, int, int]:
    """(x, y, width, height): the drawn pixel highest on viridis (green rises monotonically)."""
    found: list[int] = page.evaluate(
        """(selector) => {
          const c = document.querySelector(selector);
          const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          let best = -1, at = -1;
          for (let i = 0; i < d.length; i += 4) {
            if (d[i + 3] > 0 && d[i + 1] > best) { best = d[i + 1]; at = i / 4; }
          }
          return [at % c.width, Math.floor(at / c.width), c.width, c.height];
        }""",
        canvas,
    )
    return found[0], found[1], found[2], found[3]


def cell_of(x: int, y: int, width: int, height: int) -> tuple[int, int]:
    return (x * GRID // width, y * GRID // height)


# ---------------------------------------------------------------- tests


def test_banner_url_signs_in_and_hottest_pixel_sits_over_hottest_cell(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    page = open_page(explorer.banner_url)
    settle(page)
    assert page.get_by_role("heading", name="Sign in").is_hidden()
    assert "#token" not in page.url  # the token does not stay in the address bar
    entry = page.get_by_role("button", name=re.compile(re.escape(explorer.screen)))
    assert entry.inner_text().split()[-1] == f"{expected():,}"
    change(page, entry.click)
    change(page, lambda: page.get_by_label("Grid size").select_option(str(GRID)))
    assert shown_total(page) == expected()
    x, y, width, height = hottest_pixel(page)
    # The view has the backdrop's aspect ratio.
    assert abs(height / width - SHOT_H / SHOT_W) < 2 / width
    assert cell_of(x, y, width, height) == hottest_cell()
    # Hovering the hottest cell shows its count and its share of the total.
    hot = hottest_cell()
    box = page.locator("#heat-a").bounding_box()
    assert box is not None
    page.mouse.move(
        box["x"] + (hot[0] + 0.5) * box["width"] / GRID,
        box["y"] + (hot[1] + 0.5) * box["height"] / GRID,
    )
    hot_count = sum(t.n for t in TABLE if t.cell == hot)
    share = f"{hot_count / expected() * 100:.2f} %"
    info = page.locator("#hover-info").inner_text()
    assert f"{hot_count} touches" in info
    assert share in info
    assert page.locator("#legend-a .hi").inner_text() == f"{hot_count} / cell"


def test_backdrop_picker_newest_by_default_older_or_none(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    page = open_page(explorer.url())
    outcome = settle(page)
    assert abs(outcome["height"] / outcome["width"] - SHOT_H / SHOT_W) < 2 / outcome["width"]
    picker = page.get_by_label("Backdrop")
    choices = picker.locator("option").all_inner_texts()
    assert len(choices) == 4  # newest, the two screenshots (newest first), none
    assert f"{SHOT_W}×{SHOT_H}" in choices[1]
    assert f"{OLD_SHOT[0]}×{OLD_SHOT[1]}" in choices[2]
    older = picker.locator("option").nth(2).get_attribute("value")
    assert older
    outcome = change(page, lambda: picker.select_option(older))
    assert abs(outcome["height"] / outcome["width"] - OLD_SHOT[1] / OLD_SHOT[0]) < 2 / 300
    assert outcome["totalA"] == expected()
    outcome = change(page, lambda: picker.select_option("none"))
    assert abs(outcome["height"] / outcome["width"] - 19.5 / 9) < 2 / 300
    # The choice is part of the view's link.
    page.get_by_role("button", name="Copy link").click()
    assert "shot=none" in page.get_by_label("Link to this view").input_value()
    page.goto(explorer.url(f"&shot={older}"))
    outcome = settle(page)
    assert picker.input_value() == older
    assert abs(outcome["height"] / outcome["width"] - OLD_SHOT[1] / OLD_SHOT[0]) < 2 / 300


def test_each_filter_changes_the_counts_exactly(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    page = open_page(explorer.url())
    assert settle(page)["totalA"] == expected()

    campaign = page.get_by_label("Campaign", exact=True)
    campaign.fill("spring")
    assert change(page, lambda: campaign.press("Enter"))["totalA"] == expected(campaign="spring")
    campaign.fill("")
    assert change(page, lambda: campaign.press("Enter"))["totalA"] == expected()

    change(page, lambda: page.get_by_label("Tap", exact=True).uncheck())
    assert shown_total(page) == expected(kinds=("SCROLL", "ACTION_CLICK"))
    change(page, lambda: page.get_by_label("Action click", exact=True).uncheck())
    assert shown_total(page) == expected(kinds=("SCROLL",))
    for kind in ("Tap", "Action click"):
        change(page, page.get_by_label(kind, exact=True).check)
    assert shown_total(page) == expected()

    change(page, lambda: page.get_by_label("Time range").select_option("custom"))
    page.get_by_label("From (UTC)", exact=True).fill(local(0))
    outcome = change(page, lambda: page.get_by_label("To (UTC)", exact=True).fill(local(1)))
    assert outcome["totalA"] == expected(hours=(0, 1))
    outcome = change(page, lambda: page.get_by_label("From (UTC)", exact=True).fill(local(1)))
    assert outcome["totalA"] == 0 or outcome["kind"] == "empty"
    outcome = change(page, lambda: page.get_by_label("To (UTC)", exact=True).fill(local(3)))
    assert outcome["totalA"] == expected(hours=(1, 3))

    campaign.fill("no-such-campaign")
    outcome = change(page, lambda: campaign.press("Enter"))
    assert outcome["kind"] == "empty"
    assert "No touches" in page.locator("#status").inner_text()


def test_per_user_table_in_order_and_clicking_a_user_shows_theirs(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    page = open_page(explorer.url())
    settle(page)
    change(page, lambda: page.get_by_label("Per user", exact=True).check())
    rows = page.locator("#users-table tbody tr")
    table = [
        (
            rows.nth(i).locator("td").nth(1).inner_text(),
            int(rows.nth(i).locator("td").nth(2).inner_text()),
        )
        for i in range(rows.count())
    ]
    assert table == user_ranking()
    # Without a click the top user's heatmap is shown.
    assert shown_total(page) == user_ranking()[0][1]
    for user, touches in reversed(user_ranking()):
        change(page, page.get_by_role("button", name=user, exact=True).click)
        assert shown_total(page) == touches == expected(user=user)
    summary = page.locator("#users-summary").inner_text()
    assert f"of {len(user_ranking())} users" in summary
    assert f"{expected()} touches" in summary

    page.get_by_label("Top users").fill("2")
    change(page, lambda: page.get_by_label("Top users").press("Enter"))
    assert rows.count() == 2
    assert f"Top 2 of {len(user_ranking())} users" in page.locator("#users-summary").inner_text()


def test_compare_two_campaigns_and_two_periods(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    page = open_page(explorer.url("&campaign=spring"))
    settle(page)
    change(page, lambda: page.get_by_label("Compare", exact=True).select_option("campaign"))
    page.get_by_label("B campaign").fill("autumn")
    outcome = change(page, lambda: page.get_by_label("B campaign").press("Enter"))
    assert (outcome["totalA"], outcome["totalB"]) == (
        expected(campaign="spring"),
        expected(campaign="autumn"),
    )
    for view in ("a", "b", "diff"):
        assert page.locator(f"#view-{view}").is_visible()
    # Difference: red (A more) over spring's hot cell, blue (B more) over autumn's.
    colours = page.evaluate(
        """([grid, cells]) => {
          const c = document.querySelector('#heat-diff');
          const ctx = c.getContext('2d');
          const at = ([ix, iy]) => ctx.getImageData(
            Math.floor((ix + 0.5) * c.width / grid),
            Math.floor((iy + 0.5) * c.height / grid), 1, 1);
          return cells.map((cell) => Array.from(at(cell).data));
        }""",
        [GRID, [[3, 10], [12, 4]]],
    )
    (r_a, _, b_a, alpha_a), (r_b, _, b_b, alpha_b) = colours
    assert alpha_a > 0, colours
    assert r_a > b_a, colours
    assert alpha_b > 0, colours
    assert b_b > r_b, colours

    change(page, lambda: page.get_by_label("Compare", exact=True).select_option("off"))
    campaign = page.get_by_label("Campaign", exact=True)
    campaign.fill("")
    change(page, lambda: campaign.press("Enter"))
    change(page, lambda: page.get_by_label("Time range").select_option("custom"))
    page.get_by_label("From (UTC)", exact=True).fill(local(0))
    change(page, lambda: page.get_by_label("To (UTC)", exact=True).fill(local(1)))
    change(page, lambda: page.get_by_label("Compare", exact=True).select_option("period"))
    page.get_by_label("B from (UTC)").fill(local(1))
    outcome = change(page, lambda: page.get_by_label("B to (UTC)").fill(local(3)))
    assert (outcome["totalA"], outcome["totalB"]) == (
        expected(hours=(0, 1)),
        expected(hours=(1, 3)),
    )
    assert page.locator("#view-b").is_visible()


def test_export_downloads_a_png_the_size_of_the_view(
    explorer: Explorer, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = open_page(explorer.url())
    outcome = settle(page)
    with page.expect_download() as download:
        page.get_by_role("button", name="Export PNG").click()
    saved = tmp_path / "export.png"
    download.value.save_as(saved)
    shutil.copy(saved, ARTIFACTS / "export.png")
    with Image.open(saved) as png:
        assert png.format == "PNG"
        assert png.size == (outcome["width"], outcome["height"])
    canvas = page.evaluate(
        "() => [document.querySelector('#heat-a').width, document.querySelector('#heat-a').height]"
    )
    assert tuple(canvas) == (outcome["width"], outcome["height"])


def test_exported_png_matches_the_page(
    explorer: Explorer, open_page: Callable[..., Page], tmp_path: Path
) -> None:
    """RenderHeatmap draws as the page does: the same pixels but for the legend box."""
    page = open_page(explorer.url())
    outcome = settle(page)
    shown: str = page.evaluate(
        """() => {
          const [back, heat] = document.querySelectorAll('#view-a canvas');
          const c = document.createElement('canvas');
          c.width = back.width;
          c.height = back.height;
          const ctx = c.getContext('2d');
          ctx.drawImage(back, 0, 0);
          ctx.drawImage(heat, 0, 0);
          return c.toDataURL('image/png');
        }"""
    )
    with page.expect_download() as download:
        page.get_by_role("button", name="Export PNG").click()
    saved = tmp_path / "export.png"
    download.value.save_as(saved)
    with Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1]))) as image:
        on_page = np.asarray(image.convert("RGB"), dtype=np.int16)
    with Image.open(saved) as image:
        exported = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert exported.shape == on_page.shape == (outcome["height"], outcome["width"], 3)
    keep = np.ones(on_page.shape[:2], dtype=bool)
    legend = legend_box(outcome["width"], outcome["height"])
    if legend is not None:
        left, top, right, bottom = legend
        keep[top : bottom + 1, left : right + 1] = False
    diff = np.abs(on_page - exported).max(axis=2)[keep]
    # Backdrop resampling differs (canvas vs Lanczos) by a few levels at edges;
    # the heat layer itself is the same computation.
    assert float(diff.mean()) < 1.0, f"mean {diff.mean():.2f}"
    assert float(np.percentile(diff, 99.5)) < 24, f"p99.5 {np.percentile(diff, 99.5)}"


def test_copied_link_restores_the_view_after_pasting_a_token(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    page = open_page(explorer.url("&campaign=spring&types=TAP"))
    assert settle(page)["totalA"] == expected(campaign="spring", kinds=("TAP",))
    change(page, lambda: page.get_by_label("Grid size").select_option("32"))
    page.get_by_role("button", name="Copy link").click()
    link = page.get_by_label("Link to this view").input_value()
    assert "token" not in link
    # A new browser context: nothing in session storage, so the page asks for a token.
    other = open_page(link)
    settle(other)
    assert other.get_by_role("heading", name="Sign in").is_visible()
    other.get_by_label("Bearer token").fill(explorer.token)
    outcome = change(other, lambda: other.get_by_role("button", name="Sign in").click())
    assert outcome["totalA"] == expected(campaign="spring", kinds=("TAP",))
    assert other.get_by_label("Grid size").input_value() == "32"
    assert other.get_by_label("Campaign", exact=True).input_value() == "spring"
    assert not other.get_by_label("Scroll", exact=True).is_checked()
    assert other.evaluate("() => sessionStorage.length") == 1
    assert other.evaluate("() => localStorage.length") == 0


def test_expired_token_shows_the_sign_in_state(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    expired = mint_token(explorer.dev.secret, "analyst", [VIEW_HEATMAPS], ttl_s=-60)
    page = open_page(explorer.url(token=expired))
    outcome = settle(page)
    page.wait_for_function("() => !document.querySelector('#signin').hidden")
    assert outcome["kind"] in ("signin", "noscreen", "drawn", "error")
    assert page.get_by_role("heading", name="Sign in").is_visible()
    assert "expired" in page.locator("#signin-message").inner_text()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_390_px_layout_has_no_horizontal_overflow(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    for query in ("", "&mode=user", "&cmp=campaign&campaign=spring&bcampaign=autumn"):
        page = open_page(explorer.url(query), width=390, height=844)
        outcome = settle(page)
        assert outcome["kind"] == "drawn"
        assert outcome["width"] <= 390
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{query or 'default'}: {overflow}px wider than the viewport"


def test_backend_down_shows_an_error_state(
    explorer: Explorer, open_page: Callable[..., Page]
) -> None:
    """Last in the module: it stops the module's heatmap dev."""
    page = open_page(explorer.url())
    assert settle(page)["kind"] == "drawn"
    assert explorer.dev.stop() == 0
    outcome = change(page, lambda: page.get_by_label("Grid size").select_option("8"))
    assert outcome["kind"] == "error"
    assert "not reachable" in page.locator("#status").inner_text()
    assert page.get_by_role("button", name="Retry").is_visible()
