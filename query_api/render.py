"""Draw a heatmap over a screenshot, the way the explorer page draws it.

The drawing spec (docs/explorer.md, "Drawing"; the page's static/js/draw.js
implements the same steps), on an output of W x H pixels:

* each data point's count is splatted at its cell centre in pixels,
  ((ix + 0.5) * W / G, (iy + 0.5) * H / G), bilinearly onto the 4 nearest
  pixel centres (pixel i's centre is at i + 0.5);
* the splat is blurred by an isotropic Gaussian in pixels, sigma =
  max(0.75 * max(W / G, H / G), 2) px, as two separable 1-D passes with
  radius ceil(3 * sigma), zero outside the image: a square cell stays round
  even when W / G != H / G;
* t = density / max(density); the colour is viridis at round(255 t), the
  alpha 0.8 * smoothstep(0.02, 0.45, t) at that same step, so thin density
  fades to fully transparent with no edge and no flat haze;
* a legend in the bottom-right corner shows the ramp from 0 to the highest
  cell count.

Both blur passes are linear, so the density is D = My . C . Mx^T, where C is
the G x G count grid and My (H x G), Mx (W x G) hold for each cell row /
column the blurred bilinear splat of its centre. T = C . Mx^T is computed
once (G x W); rows of D are then computed a band at a time (My's rows for
the band times T), twice: once for the maximum, once to colour and
composite. The render's memory is the base image, T and one band, whatever
the output size; its time is about 2 H G W multiply-adds.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from query_api.colormap import VIRIDIS

DEFAULT_WIDTH = 512
# Without a screenshot: a phone screen's shape (height / width).
DEFAULT_ASPECT = 19.5 / 9
MIN_WIDTH = 16
MAX_WIDTH = 4096
MAX_OUTPUT_PIXELS = 8_000_000  # keeps the PNG well inside the gRPC message limit
MAX_ALPHA = 0.8
FADE_FROM, FADE_TO = 0.02, 0.45  # smoothstep edges of the alpha ramp
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


def sigma_px(width: int, height: int, grid: int) -> float:
    return max(0.75 * max(width / grid, height / grid), 2.0)


def gaussian_kernel(sigma: float) -> npt.NDArray[np.float64]:
    """Normalised weights at offsets -r..r, r = ceil(3 sigma)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    normalised: npt.NDArray[np.float64] = kernel / kernel.sum()
    return normalised


def smoothstep(e0: float, e1: float, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    u = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    out: npt.NDArray[np.float64] = u * u * (3 - 2 * u)
    return out


# Alpha per colour step (0..255), as the page computes it.
ALPHA_LUT: npt.NDArray[np.uint8] = np.rint(
    MAX_ALPHA * smoothstep(FADE_FROM, FADE_TO, np.arange(256) / 255.0) * 255
).astype(np.uint8)


def axis_weights(
    pixels: int, grid: int, kernel: npt.NDArray[np.float64], start: int = 0, stop: int | None = None
) -> npt.NDArray[np.float64]:
    """M[p, g] for pixels start..stop: the blurred bilinear splat of cell g's centre.

    Cell g's centre sits at (g + 0.5) * pixels / grid; between pixel centres
    p0 and p0 + 1 with weights 1 - f and f (a weight on a pixel outside the
    image is dropped, as the page drops it); the blur spreads each with the
    kernel, zero past its radius.
    """
    stop = pixels if stop is None else stop
    radius = (kernel.shape[0] - 1) // 2
    centre = (np.arange(grid, dtype=np.float64) + 0.5) * (pixels / grid) - 0.5
    p0 = np.floor(centre).astype(np.int64)
    frac = centre - p0
    rows = np.arange(start, stop, dtype=np.int64)[:, None]
    out = np.zeros((stop - start, grid), dtype=np.float64)
    for at, weight in ((p0, 1.0 - frac), (p0 + 1, frac)):
        inside = (at >= 0) & (at < pixels) & (weight != 0)
        offset = rows - at[None, :]
        near = (np.abs(offset) <= radius) & inside[None, :]
        taps = kernel[np.clip(offset + radius, 0, 2 * radius)]
        out += np.where(near, taps * weight[None, :], 0.0)
    return out


def output_size(width: int, source: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height): the width asked, the source screenshot's aspect kept.

    ``source`` is the screenshot's own (width, height), not that of the
    downscaled backdrop drawn from; without one the shape is 9 : 19.5 (a
    phone's). Width 0 means the screenshot's width (512 without one), scaled
    down if needed to stay within MAX_WIDTH and MAX_OUTPUT_PIXELS. An explicit
    width is taken as asked; callers reject sizes over the limits.
    """
    if source is None:
        w = width or DEFAULT_WIDTH
        return w, max(1, round(w * DEFAULT_ASPECT))
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


def _overlay(base: Image.Image, counts: npt.NDArray[np.float64]) -> None:
    """Composite the coloured density of ``counts`` (G x G) onto ``base`` in place."""
    out_w, out_h = base.size
    grid = counts.shape[0]
    kernel = gaussian_kernel(sigma_px(out_w, out_h, grid))
    used_rows = np.flatnonzero(counts.any(axis=1))
    # T = C . Mx^T over the cell rows that hold anything (G' x W).
    across = counts[used_rows] @ axis_weights(out_w, grid, kernel).T
    rows_per_band = max(1, _BAND_PIXELS // out_w)

    def band(top: int) -> npt.NDArray[np.float64]:
        rows = min(rows_per_band, out_h - top)
        down = axis_weights(out_h, grid, kernel, top, top + rows)[:, used_rows]
        out: npt.NDArray[np.float64] = down @ across
        return out

    peak = max(float(band(top).max()) for top in range(0, out_h, rows_per_band))
    if peak <= 0:
        return
    for top in range(0, out_h, rows_per_band):
        step = np.rint(np.clip(band(top) / peak, 0.0, 1.0) * 255).astype(np.intp)
        rgba = np.empty((*step.shape, 4), dtype=np.uint8)
        rgba[..., :3] = VIRIDIS[step]
        rgba[..., 3] = ALPHA_LUT[step]
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
