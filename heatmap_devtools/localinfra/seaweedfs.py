"""A real S3 server on loopback: SeaweedFS (Apache-2.0), built once from the Go module proxy.

``weed server -s3`` runs master, volume, filer and the S3 gateway in one
process. Credentials are generated per data dir and kept there, so a restart
on the same dir keeps both data and keys.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from heatmap_devtools.localinfra.process import ServiceProcess, cache_dir, free_port, port_open

logger = logging.getLogger(__name__)

SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"


def ensure_binary(version: str = SEAWEEDFS_VERSION) -> Path:
    """The ``weed`` binary, built into the cache on first use (~5-10 min on 2 cores)."""
    target = cache_dir() / f"seaweedfs-{version}" / "weed"
    if target.exists():
        return target
    if shutil.which("go") is None:
        raise RuntimeError("building SeaweedFS needs Go (>= 1.24) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # `go install mod@version` refuses modules whose go.mod has replace
    # directives (SeaweedFS has one), so build inside the downloaded module.
    info = subprocess.run(
        ["go", "mod", "download", "-json", f"{SEAWEEDFS_MODULE}@{version}"],
        check=True,
        capture_output=True,
        text=True,
    )
    module_dir = json.loads(info.stdout)["Dir"]
    logger.info("building SeaweedFS %s into %s (one-off)", version, target)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    tmp = target.with_suffix(".tmp")
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(tmp), "./weed"],
        cwd=module_dir,
        env=env,
        check=True,
    )
    tmp.rename(target)
    return target


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str


class SeaweedS3:
    """``weed server -s3`` on 127.0.0.1 with generated credentials."""

    def __init__(self, data_dir: Path, s3_port: int = 0) -> None:
        self.data_dir = data_dir
        self.s3_port = s3_port or free_port()
        self._process: ServiceProcess | None = None
        self.credentials = self._load_or_create_credentials()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def _load_or_create_credentials(self) -> S3Credentials:
        path = self.data_dir / "credentials.json"
        if path.exists():
            data = json.loads(path.read_text())
            return S3Credentials(data["access_key"], data["secret_key"])
        self.data_dir.mkdir(parents=True, exist_ok=True)
        creds = S3Credentials("HM" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
        path.write_text(
            json.dumps({"access_key": creds.access_key, "secret_key": creds.secret_key})
        )
        path.chmod(0o600)
        return creds

    def _s3_config(self) -> Path:
        config = {
            "identities": [
                {
                    "name": "heatmap",
                    "credentials": [
                        {
                            "accessKey": self.credentials.access_key,
                            "secretKey": self.credentials.secret_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def start(self, timeout_s: float = 60.0) -> None:
        weed = ensure_binary()
        store = self.data_dir / "store"
        store.mkdir(parents=True, exist_ok=True)
        p = {name: free_port() for name in ("master", "volume", "filer")}
        grpc = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self._process = ServiceProcess(
            "seaweedfs",
            [
                str(weed),
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={store}",
                f"-master.port={p['master']}",
                f"-master.port.grpc={grpc['master']}",
                "-master.volumeSizeLimitMB=64",
                f"-volume.port={p['volume']}",
                f"-volume.port.grpc={grpc['volume']}",
                "-volume.max=0",
                "-filer",
                f"-filer.port={p['filer']}",
                f"-filer.port.grpc={grpc['filer']}",
                f"-filer.localSocket={self.data_dir / 'filer.sock'}",
                "-s3",
                f"-s3.port={self.s3_port}",
                f"-s3.port.grpc={grpc['s3']}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.localSocket={self.data_dir / 's3.sock'}",
                f"-s3.config={self._s3_config()}",
            ],
            self.data_dir / "seaweedfs.log",
            cwd=self.data_dir,
        )
        self._process.wait_ready(self._ready, timeout_s)
        logger.info("S3 ready at %s (pid %s)", self.endpoint, self._process.pid)

    def _ready(self) -> bool:
        if not port_open(self.s3_port):
            return False
        from minio import Minio

        try:
            client = Minio(
                f"127.0.0.1:{self.s3_port}",
                access_key=self.credentials.access_key,
                secret_key=self.credentials.secret_key,
                secure=False,
            )
            client.list_buckets()
            # The S3 gateway answers before the volume server takes writes:
            # ready means a real object round-trip works.
            probe = "heatmap-ready-probe"
            if not client.bucket_exists(probe):
                client.make_bucket(probe)
            import io

            client.put_object(probe, "probe", io.BytesIO(b"ok"), 2)
            return True
        except Exception as e:
            logger.debug("S3 not ready yet: %s", e)
            return False

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive()
