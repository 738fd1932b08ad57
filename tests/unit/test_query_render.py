"""Rendering: a valid PNG of the requested size whose hottest pixel is over the hottest cell."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from query_api.backdrops import backdrop_size
from query_api.colormap import VIRIDIS, apply
from query_api.render import density_grid, legend_box, output_size, render


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
    assert image.size == (width, width) == (out.width, out.height)
    x, y = _hottest_pixel(out.png)
    cell = width / grid
    assert int(x // cell) == hot[0]
    assert int(y // cell) == hot[1]


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
    assert output_size(0, None) == (512, 512)
    # Width 0 on a huge backdrop: scaled down within the limits, aspect kept.
    w, h = output_size(0, (6000, 6000))
    assert (w, h) == (2828, 2828)
    w, h = output_size(0, (100, 400_000))
    assert w * h <= 8_000_000
    assert abs(h / w - 4000) < 40


def test_empty_heatmap_is_the_backdrop_with_a_legend() -> None:
    out = render(64, [], [], [], None, 100)
    image = Image.open(io.BytesIO(out.png))
    assert image.size == (100, 100)
    assert image.convert("RGB").getpixel((10, 10)) == (245, 245, 245)


def _whole_image_reference(
    grid: int,
    xs: list[float],
    ys: list[float],
    counts: list[int],
    backdrop: Image.Image,
    width: int,
) -> np.ndarray:
    """The render as it was before banding: every step over the whole image at once."""
    from query_api.render import MAX_ALPHA, MIN_ALPHA, smooth

    out_w, out_h = output_size(width, backdrop.size)
    base = backdrop.convert("RGBA").resize((out_w, out_h), Image.Resampling.LANCZOS)
    smoothed = smooth(density_grid(grid, xs, ys, counts))
    field = Image.fromarray((smoothed / smoothed.max()).astype(np.float32), mode="F")
    scaled = np.clip(np.asarray(field.resize((out_w, out_h), Image.Resampling.BILINEAR)), 0, 1)
    rgba = np.empty((out_h, out_w, 4), dtype=np.uint8)
    rgba[..., :3] = VIRIDIS[np.rint(scaled * 255).astype(np.intp)]
    alpha = np.where(scaled < 0.02, 0.0, MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * np.sqrt(scaled))
    rgba[..., 3] = np.rint(alpha * 255).astype(np.uint8)
    composed = Image.alpha_composite(base, Image.fromarray(rgba, mode="RGBA"))
    return np.asarray(composed.convert("RGB")).astype(np.int16)


def test_banded_render_equals_the_whole_image_render() -> None:
    # Tall enough for several bands; touches spread so every band has colour.
    rng = np.random.default_rng(3)
    xs = list(rng.uniform(0, 1, 300))
    ys = list(rng.uniform(0, 1, 300))
    counts = [int(c) for c in rng.integers(1, 20, 300)]
    backdrop = Image.new("RGB", (600, 2400), (90, 140, 200))
    out = render(64, xs, ys, counts, backdrop, 600)
    got = np.asarray(Image.open(io.BytesIO(out.png)).convert("RGB")).astype(np.int16)
    want = _whole_image_reference(64, xs, ys, counts, backdrop, 600)
    box = legend_box(out.width, out.height)
    assert box is not None
    got[box[1] :, box[0] :] = want[box[1] :, box[0] :] = 0  # the legend is drawn after
    assert got.shape == want.shape
    assert int(np.abs(got - want).max()) <= 1


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
