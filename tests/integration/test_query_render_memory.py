"""Peak RSS of a real query-api process while 16 callers render the largest backdrop.

The process is ``heatmap query-api`` (its own chDB store, screenshots on the
session's real S3 server); the figures are the kernel's high-water mark of
that process per phase (``bench.bench_render_memory``). The bound asserted
is the one the README states.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench.bench_render_memory import ROOT, S3Target, largest_png, measure
from heatmap.settings import QuerySettings
from query_api.png_check import MAX_PNG_BYTES, MAX_PNG_PIXELS
from tests.services import S3Endpoint

# README ("Known limits"): above its idle RSS, a query-api process needs at
# most this much per image slot (HEATMAP_RENDER_MAX_CONCURRENT). The largest
# job is an upload of a 40 MP RGBA PNG: 160 MB decoded, plus its backdrop
# (32 MB), one band and the request; measured ~265 MB per slot.
PER_SLOT_MB = 300


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 4 x 40 MP uploads and 16 x 8 MP renders on 2 shared cores
def test_concurrent_renders_of_the_largest_backdrop_stay_under_the_bound(
    s3_endpoint: S3Endpoint, tmp_path: Path
) -> None:
    png = largest_png()
    assert len(png) <= MAX_PNG_BYTES
    s3 = S3Target(s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key)
    figures = measure(
        ROOT, s3, f"render-memory-{uuid.uuid4().hex[:10]}", tmp_path, png, callers=16, uploads=4
    )
    slots = QuerySettings.render_max_concurrent
    bound = figures.idle_mb + slots * PER_SLOT_MB
    print(
        f"\nquery-api RSS: idle {figures.idle_mb:.0f} MB; peaks: 4 uploads "
        f"{figures.upload_peak_mb:.0f} MB, 16 renders {figures.render_peak_mb:.0f} MB, "
        f"16 first renders of a legacy screenshot {figures.legacy_peak_mb:.0f} MB; "
        f"bound {bound:.0f} MB ({slots} slots x {PER_SLOT_MB} MB over idle)"
    )
    assert MAX_PNG_PIXELS == 8000 * 5000
    assert figures.output_size == (3577, 2236)  # the largest render: 8 MP
    assert figures.peak_mb <= bound
