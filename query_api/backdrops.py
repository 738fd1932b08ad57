"""Render backdrops of bounded size, and the gate that bounds concurrent image work.

A screenshot may be 40 megapixels (160 MB as RGBA once decoded); no render
ever needs more than ``render.output_size(0, ...)`` of it (at most
``render.MAX_WIDTH`` wide and ``render.MAX_OUTPUT_PIXELS``). So the upload
derives a backdrop of exactly that size, stored beside the original, and
renders decode only that. The original stays what downloads return.

The derivation decodes the original once (the decode the upload's validity
check does anyway) and resamples it a band of rows at a time, so beyond the
decoded original it holds only one band and the small result.

``DecodeGate`` caps how many decodes and renders run at once in the
process: memory is then bounded by the cap times the largest such job,
whatever the number of callers. Callers beyond the cap wait, up to their
deadline, holding only their request.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import math
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from heatmap.errors import DeadlineExceeded
from query_api import render

T = TypeVar("T")

_BAND_ROWS = 256  # output rows resampled per band
_LANCZOS_SUPPORT = 3.0


def backdrop_size(width: int, height: int) -> tuple[int, int]:
    """The largest size any render draws a ``width`` x ``height`` screenshot at."""
    return render.output_size(0, (width, height))


def needs_backdrop(width: int, height: int) -> bool:
    """Whether a screenshot is larger than any render needs (else it is its own backdrop)."""
    return backdrop_size(width, height) != (width, height)


def _target_mode(image: Image.Image) -> str:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return "RGBA"
    return "RGB"


def _convert(band: Image.Image, mode: str) -> Image.Image:
    if band.mode.startswith("I;16"):  # 16-bit grey: Pillow converts it only via "I"/"L"
        band = band.convert("I").point(lambda v: v / 256).convert("L")
    return band if band.mode == mode else band.convert(mode)


def downscale(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resampled (Lanczos) to ``size``, a band of output rows at a time.

    Each band crops the source rows its filter reaches (plus a margin),
    converts just those and resamples them with a ``box`` in band
    coordinates, so no full-size converted or premultiplied copy is made.
    Equal, up to rounding, to one ``convert(mode).resize(size, LANCZOS)``.
    """
    src_w, src_h = image.size
    out_w, out_h = size
    mode = _target_mode(image)
    out = Image.new(mode, size)
    scale_y = src_h / out_h
    margin = math.ceil(_LANCZOS_SUPPORT * max(1.0, scale_y)) + 2
    for top in range(0, out_h, _BAND_ROWS):
        rows = min(_BAND_ROWS, out_h - top)
        y0, y1 = top * scale_y, (top + rows) * scale_y
        crop_top = max(0, math.floor(y0) - margin)
        crop_bottom = min(src_h, math.ceil(y1) + margin)
        band = _convert(image.crop((0, crop_top, src_w, crop_bottom)), mode)
        box = (0.0, y0 - crop_top, float(src_w), y1 - crop_top)
        out.paste(band.resize((out_w, rows), Image.Resampling.LANCZOS, box=box), (0, top))
    return out


def derive(image: Image.Image) -> bytes:
    """The PNG backdrop of a decoded screenshot (which must need one)."""
    size = backdrop_size(*image.size)
    small = downscale(image, size)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def derive_from_png(data: bytes) -> bytes:
    """``derive`` for a stored (already validated) original."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
        image.load()
        return derive(image)


class DecodeGate:
    """At most ``limit`` blocking image jobs at once, each in a worker thread.

    An asyncio semaphore rather than a threading one: waiters park on the
    event loop instead of pinning threads of the shared pool, which the
    object store and ClickHouse calls also need. A permit is released when
    the thread finishes, not when the caller stops waiting: a cancelled
    call's decode still holds its memory until it ends.

    Each job ends with glibc's ``malloc_trim``: Pillow allocates images in
    blocks below the mmap threshold, so freed ones stay in the allocator's
    per-thread arenas, and a burst would leave the process at its peak and
    later jobs fragmenting on top of it. Trimmed, RSS falls back between
    jobs (where the C library has no malloc_trim, nothing is done).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._trim = _malloc_trim()
        self.running = 0
        self.peak = 0

    async def run(self, fn: Callable[..., T], *args: object, max_wait_s: float | None = None) -> T:
        """``fn(*args)`` in a thread once a slot is free; DeadlineExceeded after ``max_wait_s``."""
        try:
            await asyncio.wait_for(self._slots.acquire(), max_wait_s)
        except TimeoutError as e:
            raise DeadlineExceeded(
                f"all {self.limit} image slots stayed busy until the deadline; retry later"
            ) from e
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            job = asyncio.ensure_future(asyncio.to_thread(self._job, fn, *args))
        except BaseException:
            self._release(None)
            raise
        job.add_done_callback(self._release)
        return await asyncio.shield(job)

    def _job(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        finally:
            if self._trim is not None:
                self._trim(0)

    def _release(self, job: asyncio.Future[Any] | None) -> None:
        self.running -= 1
        self._slots.release()
        if job is not None and not job.cancelled():
            job.exception()  # retrieved: a caller that stopped waiting will not see it


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim
