"""Rendering: a valid PNG of the requested size whose hottest pixel is over the hottest cell."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from query_api.backdrops import backdrop_size
from query_api.colormap import VIRIDIS, apply
from query_api.render import (
    ALPHA_LUT,
    DEFAULT_ASPECT,
    density_grid,
    gaussian_kernel,
    legend_box,
    output_size,
    render,
    sigma_px,
)


def test_viridis_endpoints_match_the_published_map() -> None:
    assert VIRIDIS.shape == (256, 3)
    for got, want in ((VIRIDIS[0], (68, 1, 84)), (VIRIDIS[255], (253, 231, 37))):
        assert np.abs(got.astype(int) - np.array(want)).max() <= 5
    assert apply(np.array([0.0, 1.0, 2.0])).tolist()[2] == VIRIDIS[255].tolist()


def test_density_grid_places_counts_at_cell_centres() -> None:
    grid = density_grid(8, [0.0625, 0.9375], [0.0625, 0.5625], [3, 5])
    assert grid[0, 0] == 3
    assert grid[4, 7] == 5
    assert grid.sum() == 8


def _hottest_pixel(png: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(png))
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    box = legend_box(image.width, image.height)
    if box is not None:
        left, top, right, bottom = box
        rgb[top : bottom + 1, left : right + 1] = 0
    # Closest to the top of the colour map = the densest spot.
    distance = np.abs(rgb - VIRIDIS[255].astype(np.int32)).sum(axis=2)
    y, x = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return int(x), int(y)


@pytest.mark.parametrize(("grid", "width"), [(8, 200), (64, 640), (512, 512)])
def test_blank_canvas_hottest_pixel_over_hottest_cell(grid: int, width: int) -> None:
    hot = (grid // 4, (3 * grid) // 4)  # (ix, iy)
    cold = ((3 * grid) // 4, grid // 4)
    xs = [(hot[0] + 0.5) / grid, (cold[0] + 0.5) / grid]
    ys = [(hot[1] + 0.5) / grid, (cold[1] + 0.5) / grid]
    out = render(grid, xs, ys, [50, 10], None, width)
    image = Image.open(io.BytesIO(out.png))
    assert image.format == "PNG"
    # No screenshot: a phone's shape, 9 : 19.5 (the page's default too).
    height = round(width * DEFAULT_ASPECT)
    assert image.size == (width, height) == (out.width, out.height)
    x, y = _hottest_pixel(out.png)
    assert int(x // (width / grid)) == hot[0]
    assert int(y // (height / grid)) == hot[1]


def test_over_a_screenshot_keeps_aspect_ratio_and_backdrop() -> None:
    backdrop = Image.new("RGB", (390, 844), (200, 30, 30))
    out = render(64, [0.5 / 64 + 10 / 64], [20.5 / 64], [7], backdrop, 195)
    image = Image.open(io.BytesIO(out.png))
    assert image.size == (195, 422) == (out.width, out.height)
    # Far from any touch the backdrop shows unchanged.
    assert image.convert("RGB").getpixel((180, 5)) == (200, 30, 30)
    x, y = _hottest_pixel(out.png)
    assert int(x // (195 / 64)) == 10
    assert int(y // (422 / 64)) == 20
    assert output_size(0, backdrop.size) == (390, 844)
    assert output_size(0, None) == (512, 1109)
    # Width 0 on a huge backdrop: scaled down within the limits, aspect kept.
    w, h = output_size(0, (6000, 6000))
    assert (w, h) == (2828, 2828)
    w, h = output_size(0, (100, 400_000))
    assert w * h <= 8_000_000
    assert abs(h / w - 4000) < 40


def test_empty_heatmap_is_the_backdrop_with_a_legend() -> None:
    out = render(64, [], [], [], None, 100)
    image = Image.open(io.BytesIO(out.png))
    assert image.size == (100, 217)
    assert image.convert("RGB").getpixel((10, 10)) == (245, 245, 245)


def _spec_reference(
    grid: int,
    xs: list[float],
    ys: list[float],
    counts: list[int],
    backdrop: Image.Image,
    width: int,
) -> np.ndarray:
    """The drawing spec step by step over the whole image, as the page does it
    (static/js/draw.js): splat on pixels, blur rows then columns, colour, composite."""
    out_w, out_h = output_size(width, backdrop.size)
    base = backdrop.convert("RGB").resize((out_w, out_h), Image.Resampling.LANCZOS)
    splat = np.zeros((out_h, out_w))
    for x, y, n in zip(xs, ys, counts, strict=True):
        ix, iy = min(int(x * grid), grid - 1), min(int(y * grid), grid - 1)
        px, py = (ix + 0.5) * out_w / grid - 0.5, (iy + 0.5) * out_h / grid - 0.5
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        fx, fy = px - x0, py - y0
        for yy, wy in ((y0, 1 - fy), (y0 + 1, fy)):
            for xx, wx in ((x0, 1 - fx), (x0 + 1, fx)):
                if 0 <= yy < out_h and 0 <= xx < out_w:
                    splat[yy, xx] += n * wy * wx
    kernel = gaussian_kernel(sigma_px(out_w, out_h, grid))
    r = (kernel.size - 1) // 2  # zero outside the image, whatever the kernel's length

    def blur(v: np.ndarray) -> np.ndarray:
        return np.convolve(v, kernel, mode="full")[r : r + v.size]

    dens = np.apply_along_axis(blur, 0, np.apply_along_axis(blur, 1, splat))
    step = np.rint(dens / dens.max() * 255).astype(np.intp)
    rgba = np.empty((out_h, out_w, 4), dtype=np.uint8)
    rgba[..., :3] = VIRIDIS[step]
    rgba[..., 3] = ALPHA_LUT[step]
    composed = Image.alpha_composite(base.convert("RGBA"), Image.fromarray(rgba, mode="RGBA"))
    return np.asarray(composed.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize(("grid", "size", "width"), [(64, (600, 2400), 600), (8, (390, 844), 195)])
def test_render_equals_the_spec_step_by_step(grid: int, size: tuple[int, int], width: int) -> None:
    # Several bands (600 x 2400 at 1 MP per band... two), touches everywhere.
    rng = np.random.default_rng(3)
    xs = list(rng.uniform(0, 1, 300))
    ys = list(rng.uniform(0, 1, 300))
    counts = [int(c) for c in rng.integers(1, 20, 300)]
    backdrop = Image.new("RGB", size, (90, 140, 200))
    out = render(grid, xs, ys, counts, backdrop, width)
    got = np.asarray(Image.open(io.BytesIO(out.png)).convert("RGB")).astype(np.int16)
    want = _spec_reference(grid, xs, ys, counts, backdrop, width)
    box = legend_box(out.width, out.height)
    assert box is not None
    got[box[1] :, box[0] :] = want[box[1] :, box[0] :] = 0  # the legend is drawn after
    assert got.shape == want.shape
    assert int(np.abs(got - want).max()) <= 1


def _heat_alpha(out_png: bytes, backdrop_rgb: tuple[int, int, int]) -> np.ndarray:
    """Where the heat layer changed the backdrop (legend excluded)."""
    image = Image.open(io.BytesIO(out_png))
    rgb = np.asarray(image.convert("RGB")).astype(np.int16)
    changed: np.ndarray = np.abs(rgb - np.array(backdrop_rgb, dtype=np.int16)).sum(axis=2) > 0
    box = legend_box(image.width, image.height)
    if box is not None:
        changed[box[1] :, box[0] :] = False
    return changed


def test_a_square_cell_stays_round_on_a_tall_screen() -> None:
    # Grid 16 on 300 x 1200: a cell is 18.75 x 75 px. Smoothing in cell space
    # made it a tall ellipse; in pixels it is a circle.
    backdrop = Image.new("RGB", (300, 1200), (128, 128, 128))
    out = render(16, [8.5 / 16], [8.5 / 16], [9], backdrop, 300)
    changed = _heat_alpha(out.png, (128, 128, 128))
    ys, xs = np.nonzero(changed)
    assert xs.size
    spread_x, spread_y = xs.max() - xs.min(), ys.max() - ys.min()
    assert abs(int(spread_x) - int(spread_y)) <= 2, (spread_x, spread_y)


def test_low_density_fades_to_transparent_without_haze_or_edge() -> None:
    # Touches spread over the screen (Beta-distributed rows) and one hot cell:
    # the old look laid alpha >= 0.3 wherever the density passed 2 % of the
    # peak (a third of this screen strongly tinted, a 51-level step at its
    # edge); now thin density fades in smoothly from fully transparent.
    rng = np.random.default_rng(1)
    xs = [*rng.uniform(0, 1, 3000), 0.5]
    ys = [*rng.beta(2, 5, 3000), 0.3]
    backdrop = Image.new("RGB", (390, 844), (30, 30, 30))
    out = render(64, xs, ys, [1] * 3000 + [60], backdrop, 390)
    image = Image.open(io.BytesIO(out.png))
    diff = np.abs(np.asarray(image.convert("RGB")).astype(int) - 30).sum(axis=2)
    box = legend_box(image.width, image.height)
    assert box is not None
    diff[box[1] :, box[0] :] = 0
    changed = diff > 0
    inner = (np.roll(changed, 1, 0) & np.roll(changed, -1, 0) & np.roll(changed, 1, 1)) & np.roll(
        changed, -1, 1
    )
    edge = changed & ~inner
    assert edge.any()
    assert int(diff[edge].max()) <= 8  # no hard edge where the colour starts
    assert (diff > 60).mean() < 0.15  # no flat haze over the screenshot
    assert diff[-40:, :].max() == 0  # the empty bottom stays the screenshot exactly
    assert ALPHA_LUT[0] == 0
    assert ALPHA_LUT[5] == 0  # t = 0.0196 < 0.02
    assert ALPHA_LUT[255] == round(0.8 * 255)
    assert int(np.abs(np.diff(ALPHA_LUT.astype(int))).max()) <= 3  # a ramp, no step


def test_a_downscaled_backdrop_renders_at_the_screenshots_size() -> None:
    # The stored backdrop of a 5000x400 screenshot is smaller; the aspect and
    # what width 0 means still come from the screenshot.
    small = Image.new("RGB", backdrop_size(5000, 400), (10, 10, 10))
    out = render(64, [0.5], [0.5], [1], small, 0, source_size=(5000, 400))
    assert (out.width, out.height) == output_size(0, (5000, 400)) == (4096, 328)
    out = render(
        64, [0.5], [0.5], [1], Image.new("RGB", (300, 200)), 1000, source_size=(3000, 1000)
    )
    assert (out.width, out.height) == (1000, 333)
