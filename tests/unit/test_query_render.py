"""Rendering: a valid PNG of the requested size whose hottest pixel is over the hottest cell."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

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
    assert output_size(0, backdrop) == (390, 844)
    assert output_size(0, None) == (512, 512)
    # Width 0 on a huge backdrop: scaled down within the limits, aspect kept.
    w, h = output_size(0, Image.new("L", (6000, 6000)))
    assert (w, h) == (2828, 2828)
    w, h = output_size(0, Image.new("L", (100, 400_000)))
    assert w * h <= 8_000_000
    assert abs(h / w - 4000) < 40


def test_empty_heatmap_is_the_backdrop_with_a_legend() -> None:
    out = render(64, [], [], [], None, 100)
    image = Image.open(io.BytesIO(out.png))
    assert image.size == (100, 100)
    assert image.convert("RGB").getpixel((10, 10)) == (245, 245, 245)
