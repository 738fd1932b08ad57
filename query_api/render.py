"""Draw a heatmap over a screenshot: smoothed density, viridis, alpha, legend.

The density is the query's cell grid (counts), smoothed with a separable
Gaussian kernel in cell space (sigma = one 64-grid cell, at least half a
cell at coarse grids), upsampled bilinearly to the output size, coloured with
viridis and alpha-blended so the screenshot stays readable: alpha grows with
the square root of the density from ``MIN_ALPHA`` to ``MAX_ALPHA``, and cells with
(almost) nothing are fully transparent. A small legend in the bottom-right
corner shows the colour scale from 0 to the highest cell count.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from query_api.colormap import VIRIDIS

DEFAULT_WIDTH = 512
MIN_WIDTH = 16
MAX_WIDTH = 4096
MAX_OUTPUT_PIXELS = 8_000_000  # keeps the PNG well inside the gRPC message limit
MIN_ALPHA = 0.3
MAX_ALPHA = 0.75
_CUTOFF = 0.02  # density below this share of the peak is not drawn
_BAND_PIXELS = 1 << 20


@dataclass(frozen=True)
class Rendered:
    png: bytes
    width: int
    height: int


def density_grid(
    grid: int, xs: Sequence[float], ys: Sequence[float], counts: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Counts on a grid x grid array indexed [row (y), column (x)] from cell centres."""
    out = np.zeros((grid, grid), dtype=np.float64)
    if len(counts):
        ix = np.minimum((np.asarray(xs, dtype=np.float64) * grid).astype(np.intp), grid - 1)
        iy = np.minimum((np.asarray(ys, dtype=np.float64) * grid).astype(np.intp), grid - 1)
        np.add.at(out, (iy, ix), np.asarray(counts, dtype=np.float64))
    return out


def _gaussian_kernel(sigma: float) -> npt.NDArray[np.float64]:
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    normalised: npt.NDArray[np.float64] = kernel / kernel.sum()
    return normalised


def smooth(density: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Separable Gaussian blur, zero outside the screen."""
    grid = density.shape[0]
    kernel = _gaussian_kernel(max(0.5, grid / 64))
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="same"), 1, density)
    both: npt.NDArray[np.float64] = np.apply_along_axis(
        lambda c: np.convolve(c, kernel, mode="same"), 0, rows
    )
    return both


def output_size(width: int, source: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height): the width asked, the source screenshot's aspect kept.

    ``source`` is the screenshot's own (width, height), not that of the
    downscaled backdrop drawn from. Width 0 means the screenshot's width
    (512 without one), scaled down if needed to stay within MAX_WIDTH and
    MAX_OUTPUT_PIXELS. An explicit width is taken as asked; callers reject
    sizes over the limits.
    """
    if source is None:
        w = width or DEFAULT_WIDTH
        return w, w
    source_w, source_h = source
    aspect = source_h / source_w
    if width:
        return width, max(1, round(width * aspect))
    w = min(source_w, MAX_WIDTH, max(1, int((MAX_OUTPUT_PIXELS / aspect) ** 0.5)))
    return w, max(1, round(w * aspect))


def legend_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """Where the legend is drawn (left, top, right, bottom), or None if the image is too small."""
    if width < 96 or height < 48:
        return None
    box_w = min(160, width // 3)
    box_h = 34
    margin = 6
    return (width - box_w - margin, height - box_h - margin, width - margin, height - margin)


def _draw_legend(image: Image.Image, max_count: int) -> None:
    box = legend_box(*image.size)
    if box is None:
        return
    left, top, right, _bottom = box
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle(box, fill=(255, 255, 255, 210), outline=(60, 60, 60, 255))
    bar_left, bar_right = left + 5, right - 5
    bar_top, bar_bottom = top + 4, top + 14
    span = max(1, bar_right - bar_left)
    for i in range(span):
        r, g, b = (int(v) for v in VIRIDIS[round(i / max(1, span - 1) * 255)])
        draw.line([(bar_left + i, bar_top), (bar_left + i, bar_bottom)], fill=(r, g, b, 255))
    font = ImageFont.load_default()
    draw.text((bar_left, bar_bottom + 2), "0", fill=(0, 0, 0, 255), font=font)
    label = f"{max_count} / cell"
    text_w = draw.textlength(label, font=font)
    draw.text((bar_right - text_w, bar_bottom + 2), label, fill=(0, 0, 0, 255), font=font)


def _base(backdrop: Image.Image | None, size: tuple[int, int]) -> Image.Image:
    if backdrop is None:
        return Image.new("RGBA", size, (245, 245, 245, 255))
    if backdrop.mode in ("RGBA", "LA", "PA") or "transparency" in backdrop.info:
        # Resampled premultiplied (Pillow does so for RGBA), as before.
        return backdrop.convert("RGBA").resize(size, Image.Resampling.LANCZOS)
    # Opaque: resample in RGB, then widen only the result to RGBA.
    return backdrop.convert("RGB").resize(size, Image.Resampling.LANCZOS).convert("RGBA")


def _overlay(base: Image.Image, raw: npt.NDArray[np.float64]) -> None:
    """Composite the coloured density onto ``base`` in place, a band of rows at a time.

    Banding keeps the float temporaries (several bytes per output pixel each)
    at about ``_BAND_PIXELS`` instead of the whole image: the render's peak
    memory is the base image and little else. Each band is resampled from the
    whole density field with a ``box`` in source coordinates, and Pillow
    clamps the filter to the full field, so bands join seamlessly: the result
    equals one resize of the whole field.
    """
    out_w, out_h = base.size
    grid = raw.shape[0]
    smoothed = smooth(raw)
    field = Image.fromarray((smoothed / float(smoothed.max())).astype(np.float32), mode="F")
    rows_per_band = max(1, _BAND_PIXELS // out_w)
    for top in range(0, out_h, rows_per_band):
        rows = min(rows_per_band, out_h - top)
        box = (0.0, top * grid / out_h, float(grid), (top + rows) * grid / out_h)
        scaled = np.asarray(field.resize((out_w, rows), Image.Resampling.BILINEAR, box=box))
        scaled = np.clip(scaled, 0.0, 1.0)
        rgba = np.empty((rows, out_w, 4), dtype=np.uint8)
        rgba[..., :3] = VIRIDIS[np.rint(scaled * 255).astype(np.intp)]
        alpha = np.where(
            scaled < _CUTOFF, 0.0, MIN_ALPHA + (MAX_ALPHA - MIN_ALPHA) * np.sqrt(scaled)
        )
        rgba[..., 3] = np.rint(alpha * 255).astype(np.uint8)
        base.alpha_composite(Image.fromarray(rgba, mode="RGBA"), dest=(0, top))


def render(
    grid: int,
    xs: Sequence[float],
    ys: Sequence[float],
    counts: Sequence[int],
    backdrop: Image.Image | None,
    width: int = 0,
    source_size: tuple[int, int] | None = None,
) -> Rendered:
    """The heatmap of the given cells over ``backdrop`` (or a blank canvas) as PNG.

    ``source_size`` is the screenshot's own size when ``backdrop`` is its
    downscaled copy (defaults to the backdrop's size): it fixes the aspect
    ratio and what width 0 means.
    """
    if backdrop is not None and source_size is None:
        source_size = backdrop.size
    out_w, out_h = output_size(width, source_size)
    base = _base(backdrop, (out_w, out_h))
    raw = density_grid(grid, xs, ys, counts)
    max_count = int(raw.max()) if raw.size else 0
    if max_count > 0:
        _overlay(base, raw)
    _draw_legend(base, max_count)
    rgb = base.convert("RGB")
    base.close()
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", optimize=False, compress_level=6)
    return Rendered(png=buffer.getvalue(), width=out_w, height=out_h)
