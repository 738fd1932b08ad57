"""Peak memory of the query service rendering the largest backdrop for many callers at once.

``heatmap query-api`` runs as its own process (its own chDB store, screenshots
in a real S3 server: SeaweedFS). The phases, each on the same process:

1. idle: after a warm-up render on a blank canvas;
2. upload: ``--uploads`` concurrent UploadScreenshot calls, each an
   8000x5000 RGBA PNG (40 MP, the largest allowed, mostly flat so it stays
   under the 10 MiB limit; distinct bytes, so each is stored);
3. render: ``--callers`` concurrent RenderHeatmap calls over it at width 0
   (the largest output, 8 MP);
4. legacy: the same image written straight into the bucket in the layout
   of a screenshot stored before backdrops existed (no backdrop object),
   then the same concurrent renders (the first ones derive its backdrop).

Peak RSS is the kernel's high-water mark of that process (``VmHWM`` in
``/proc/<pid>/status``), reset through ``/proc/<pid>/clear_refs`` before
each phase, so each figure is that phase's own peak.

``--reference-src DIR`` measures, in the same run, a checkout of other code
(e.g. ``git worktree add /tmp/before <commit>``) with the same phases.

    python -m bench.bench_render_memory --reference-src /tmp/before
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from heatmap.auth import MANAGE_HEATMAPS, VIEW_HEATMAPS, mint_token
from heatmap.settings import S3Settings
from heatmap_devtools.localinfra.process import free_port
from heatmap_devtools.localinfra.seaweedfs import SeaweedS3
from query_api.screenshots import S3ScreenshotStore, Screenshot
from schemas.heatmap.v1 import heatmap_pb2 as pb
from schemas.heatmap.v1 import heatmap_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SECRET = "render-memory-bench-secret-0123456789abcdef"
WIDTH, HEIGHT = 8000, 5000
MB = 1 << 20
_OPTIONS = [
    ("grpc.max_send_message_length", 64 * MB),
    ("grpc.max_receive_message_length", 64 * MB),
]

# Touches for the overlay, written into the server's store before it starts
# (chDB: one process per store), with the test suite's own helper.
_SEED = """
import sys
from heatmap.settings import ClickHouseSettings
from tests.integration.test_query_heatmap import H10, Ev, insert_events
events = [Ev(s, "", 1, f"u{i % 7}", H10, (i % 97) / 97, (i % 89) / 89)
          for s in ("Big", "Legacy") for i in range(3000)]
insert_events(ClickHouseSettings(url=sys.argv[1]), events)
"""


@dataclass(frozen=True)
class S3Target:
    endpoint: str
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class Figures:
    idle_mb: float
    upload_peak_mb: float
    render_peak_mb: float
    legacy_peak_mb: float
    render_seconds: float
    legacy_seconds: float
    output_size: tuple[int, int]

    @property
    def peak_mb(self) -> float:
        return max(self.upload_peak_mb, self.render_peak_mb, self.legacy_peak_mb)


def largest_png() -> bytes:
    """A 40 MP RGBA screen-like image (panels, gradient, text rows, a photo), < 10 MiB."""
    rng = np.random.default_rng(11)
    pixels = np.empty((HEIGHT, WIDTH, 4), dtype=np.uint8)
    pixels[...] = (246, 246, 248, 255)
    pixels[:400, :, :3] = np.linspace(40, 200, WIDTH, dtype=np.uint8)[None, :, None]
    for _ in range(300):
        x, y = int(rng.integers(0, WIDTH - 900)), int(rng.integers(400, HEIGHT - 300))
        w, h = int(rng.integers(100, 900)), int(rng.integers(40, 300))
        pixels[y : y + h, x : x + w, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    # A photo: noise does not compress, so the file is several MiB as real ones are.
    pixels[600:1600, 5000:6200, :3] = rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8)
    for row in range(500, HEIGHT, 120):  # "text": short dark dashes
        dashes = np.zeros(WIDTH, dtype=bool)
        dashes[::9] = dashes[1::9] = dashes[2::9] = True
        pixels[row : row + 14, 200 : WIDTH - 200][:, dashes[200 : WIDTH - 200], :3] = 30
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/{pid}/status")


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_mb(pid: int) -> float:
    return _status_kb(pid, "VmHWM") / 1024


@contextmanager
def query_process(
    src: Path, s3: S3Target, bucket: str, workdir: Path, max_concurrent: int | None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``heatmap query-api`` from the code in ``src``, serving on a free loopback port."""
    port = free_port()
    chdb = f"chdb://{workdir}/chdb"
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "HEATMAP_CLICKHOUSE_URL": chdb,
        "HEATMAP_JWT_SECRET": SECRET,
        "HEATMAP_S3_ENDPOINT": s3.endpoint,
        "HEATMAP_S3_ACCESS_KEY": s3.access_key,
        "HEATMAP_S3_SECRET_KEY": s3.secret_key,
        "HEATMAP_S3_BUCKET": bucket,
        "HEATMAP_GRPC_HOST": "127.0.0.1",
        "HEATMAP_GRPC_PORT": str(port),
        "HEATMAP_METRICS_PORT": "0",
        "HEATMAP_LOG_FORMAT": "text",
    }
    env.pop("HEATMAP_SCREENSHOT_DIR", None)
    env.pop("HEATMAP_KAFKA_BOOTSTRAP", None)
    if max_concurrent is not None:
        env["HEATMAP_RENDER_MAX_CONCURRENT"] = str(max_concurrent)
    for argv in (["-m", "heatmap_cli.cli", "migrate"], ["-c", _SEED, chdb]):
        subprocess.run(
            [sys.executable, *argv], env=env, cwd=src, check=True, timeout=300, capture_output=True
        )
    log_path = workdir / "query-api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "heatmap_cli.cli", "query-api"],
            env=env,
            cwd=src,
            stdout=log,
            stderr=log,
        )
        try:
            _wait_serving(process, f"127.0.0.1:{port}", log_path)
            yield process, f"127.0.0.1:{port}"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_serving(process: subprocess.Popen[bytes], target: str, log: Path) -> None:
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"query-api exited: {log.read_text()[-3000:]}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError("query-api did not become SERVING")


def _metadata(*permissions: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(SECRET, 'bench', list(permissions))}"),)


def _write_legacy(s3: S3Target, bucket: str, png: bytes) -> str:
    """The image stored as a screenshot uploaded before backdrops existed: no backdrop object."""
    store = S3ScreenshotStore(
        S3Settings(
            endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, bucket=bucket
        )
    )
    try:
        shot = store.put(Screenshot.new("Legacy", png, WIDTH, HEIGHT, "bench"), png)
    finally:
        store.close()
    return shot.screenshot_id


async def _burst(
    target: str, screen: str, shot_id: str, callers: int
) -> tuple[float, tuple[int, int]]:
    options = _OPTIONS
    view = _metadata(VIEW_HEATMAPS)
    request = pb.RenderHeatmapRequest(
        query=pb.QueryHeatmapDataRequest(screen_name=screen, grid_size=64),
        screenshot_id=shot_id,
    )
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(stub.RenderHeatmap(request, metadata=view, timeout=600) for _ in range(callers))
        )
        elapsed = time.perf_counter() - started
    sizes = {(r.width, r.height) for r in replies}
    if len(sizes) != 1 or len({r.png for r in replies}) != 1:
        raise AssertionError(f"renders differ: {sizes}")
    return elapsed, sizes.pop()


def variant(png: bytes, n: int) -> bytes:
    """``png`` with a text chunk added: the same image, other bytes (so not deduplicated)."""
    payload = b"Comment\0variant " + str(n).encode()
    body = b"tEXt" + payload
    chunk = struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]  # before IEND


async def _upload(target: str, pngs: list[bytes]) -> str:
    """All of ``pngs`` uploaded at once; the first one's id (after a download check)."""
    async with grpc.aio.insecure_channel(target, options=_OPTIONS) as channel:
        stub = heatmap_pb2_grpc.HeatmapServiceStub(channel)
        replies = await asyncio.gather(
            *(
                stub.UploadScreenshot(
                    pb.UploadScreenshotRequest(
                        screen_name="Big", image_data=png, width=WIDTH, height=HEIGHT
                    ),
                    metadata=_metadata(MANAGE_HEATMAPS),
                    timeout=600,
                )
                for png in pngs
            )
        )
        shot_id = str(replies[0].screenshot.screenshot_id)
        got = await stub.GetScreenshot(
            pb.GetScreenshotRequest(screenshot_id=shot_id),
            metadata=_metadata(VIEW_HEATMAPS),
            timeout=600,
        )
        if got.image_data != pngs[0]:
            raise AssertionError("GetScreenshot did not return the uploaded bytes")
        return shot_id


def measure(
    src: Path,
    s3: S3Target,
    bucket: str,
    workdir: Path,
    png: bytes,
    callers: int = 16,
    uploads: int = 4,
    max_concurrent: int | None = None,
) -> Figures:
    """The four phases against the code in ``src`` (see the module doc)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with query_process(src, s3, bucket, workdir, max_concurrent) as (process, target):
        pid = process.pid
        asyncio.run(_burst(target, "Nothing", "", 2))  # warm-up: blank canvas
        idle = _status_kb(pid, "VmRSS") / 1024
        _reset_peak(pid)
        shot_id = asyncio.run(_upload(target, [variant(png, i) for i in range(uploads)]))
        upload_peak = _peak_mb(pid)
        _reset_peak(pid)
        render_s, size = asyncio.run(_burst(target, "Big", shot_id, callers))
        render_peak = _peak_mb(pid)
        legacy_id = _write_legacy(s3, bucket, png)
        _reset_peak(pid)
        legacy_s, _ = asyncio.run(_burst(target, "Legacy", legacy_id, callers))
        legacy_peak = _peak_mb(pid)
    return Figures(idle, upload_peak, render_peak, legacy_peak, render_s, legacy_s, size)


def _report(name: str, f: Figures) -> str:
    return (
        f"{name:10} idle {f.idle_mb:7.0f} MB | upload peak {f.upload_peak_mb:7.0f} MB"
        f" | render peak {f.render_peak_mb:7.0f} MB ({f.render_seconds:5.1f} s)"
        f" | legacy peak {f.legacy_peak_mb:7.0f} MB ({f.legacy_seconds:5.1f} s)"
        f" | output {f.output_size[0]}x{f.output_size[1]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=None)
    parser.add_argument("--reference-src", type=Path, default=None)
    args = parser.parse_args()
    png = largest_png()
    print(
        f"backdrop: {WIDTH}x{HEIGHT} RGBA, {len(png) / MB:.1f} MiB PNG; "
        f"{args.uploads} uploads, {args.callers} render callers"
    )
    with tempfile.TemporaryDirectory(prefix="render-memory-") as tmp:
        server = SeaweedS3(Path(tmp) / "s3")
        server.start()
        try:
            s3 = S3Target(
                server.endpoint, server.credentials.access_key, server.credentials.secret_key
            )
            runs = [("this code", ROOT)]
            if args.reference_src is not None:
                runs.append(("reference", args.reference_src.resolve()))
            for i, (name, src) in enumerate(runs):
                figures = measure(
                    src,
                    s3,
                    f"render-memory-{i}",
                    Path(tmp) / f"run{i}",
                    png,
                    args.callers,
                    args.uploads,
                    args.max_concurrent,
                )
                print(_report(name, figures), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
