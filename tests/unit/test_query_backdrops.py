"""Downscaled backdrops and the gate on concurrent image work (no I/O: threads only)."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from heatmap.errors import DeadlineExceeded
from heatmap.settings import Settings, SettingsError
from query_api import render
from query_api.backdrops import (
    DecodeGate,
    backdrop_size,
    derive,
    derive_from_png,
    downscale,
    needs_backdrop,
)


def _noise(width: int, height: int, mode: str) -> Image.Image:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    return rgb.convert(mode)


def test_backdrop_is_the_largest_size_any_render_draws() -> None:
    assert backdrop_size(8000, 5000) == render.output_size(0, (8000, 5000)) == (3577, 2236)
    assert needs_backdrop(8000, 5000)
    assert needs_backdrop(5000, 100)  # wider than MAX_WIDTH
    assert not needs_backdrop(390, 844)
    assert not needs_backdrop(render.MAX_WIDTH, 1000)
    w, h = backdrop_size(100, 400_000)
    assert w * h <= render.MAX_OUTPUT_PIXELS


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1"])
def test_banded_downscale_equals_one_resize(mode: str) -> None:
    # Noise, so a seam or an off-by-one row between bands would show.
    image = _noise(4300, 700, mode)
    size = backdrop_size(*image.size)
    got = downscale(image, size)
    want_mode = "RGBA" if mode in ("RGBA", "LA") else "RGB"
    want = image.convert(want_mode).resize(size, Image.Resampling.LANCZOS)
    assert got.size == size
    assert got.mode == want_mode
    diff = np.abs(np.asarray(got).astype(np.int16) - np.asarray(want).astype(np.int16))
    assert int(diff.max()) <= 1


def test_palette_transparency_and_16_bit_grey_survive() -> None:
    palette = _noise(4200, 600, "P")
    palette.info["transparency"] = 0
    assert downscale(palette, backdrop_size(*palette.size)).mode == "RGBA"
    grey = np.full((600, 4200), 40_000, dtype=np.uint16)  # 40000/65535 of full scale
    out = downscale(Image.fromarray(grey), backdrop_size(4200, 600))
    assert out.mode == "RGB"
    assert abs(int(np.asarray(out)[10, 10, 0]) - round(40_000 / 257)) <= 1


def test_derive_from_png_is_a_png_of_backdrop_size() -> None:
    buffer = io.BytesIO()
    _noise(4200, 300, "RGB").save(buffer, format="PNG")
    png = derive_from_png(buffer.getvalue())
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        assert image.size == backdrop_size(4200, 300)
    assert derive(_noise(4200, 300, "RGB")) == png


def test_gate_caps_concurrent_jobs() -> None:
    lock = threading.Lock()
    running = [0, 0]  # now, most at once

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i

    async def main() -> list[int]:
        gate = DecodeGate(2)
        results = await asyncio.gather(*(gate.run(job, i) for i in range(8)))
        assert gate.peak == 2
        assert gate.running == 0
        return list(results)

    assert asyncio.run(main()) == list(range(8))
    assert running[1] == 2


def test_a_caller_that_gives_up_keeps_its_slot_until_the_thread_ends() -> None:
    release = threading.Event()

    async def main() -> None:
        gate = DecodeGate(1)
        caller = asyncio.create_task(gate.run(release.wait, 10))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        # The decode is still running: nobody else may start one.
        assert gate.running == 1
        with pytest.raises(DeadlineExceeded):
            await gate.run(time.sleep, 0, max_wait_s=0.05)
        release.set()
        await asyncio.sleep(0.05)
        assert gate.running == 0
        assert await gate.run(lambda: "ran", max_wait_s=1) == "ran"

    asyncio.run(main())


def test_gate_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad image")

    async def main() -> None:
        gate = DecodeGate(1)
        with pytest.raises(ValueError, match="bad image"):
            await gate.run(fail)
        assert gate.running == 0

    asyncio.run(main())


def test_slot_count_is_a_setting() -> None:
    assert Settings.from_env({}).query.render_max_concurrent == 2
    assert (
        Settings.from_env({"HEATMAP_RENDER_MAX_CONCURRENT": "3"}).query.render_max_concurrent == 3
    )
    for bad in ("0", "-1", "two"):
        with pytest.raises(SettingsError, match="HEATMAP_RENDER_MAX_CONCURRENT"):
            Settings.from_env({"HEATMAP_RENDER_MAX_CONCURRENT": bad})
