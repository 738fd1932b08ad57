"""Screenshot storage: PNG bytes and their metadata, side by side in one store.

Layout (identical in S3 and on the filesystem, so the object store alone is
the source of truth; no database holds screenshot metadata):

    screens/<screen_key>/<screenshot_id>.png           the PNG bytes, as uploaded
    screens/<screen_key>/<screenshot_id>.backdrop.png  downscaled copy renders draw on
    screens/<screen_key>/<screenshot_id>.json          ScreenScreenshot fields (written last)

``screen_key`` is the first 16 hex digits of sha256(screen_name), so any
screen name is a safe key. ``screenshot_id`` = screen_key + 16 hex digits of
sha256(screen_name NUL sha256(bytes)): deterministic, so identical bytes for
the same screen map to the same object and the upload returns the existing
screenshot; and the id alone locates the objects (GetScreenshot needs no
index). The JSON is written after the PNG: a listed screenshot is complete.

The backdrop exists only for screenshots larger than any render needs
(``query_api.backdrops``); a screenshot stored before backdrops existed gets
one the first time it is rendered. Its name does not end in ``.json``, so
listings never see it, and downloads keep returning the original.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import urllib3
from minio import Minio
from minio.error import S3Error

from heatmap.errors import Unavailable
from heatmap.settings import S3Settings
from schemas.heatmap.v1 import heatmap_pb2

logger = logging.getLogger(__name__)

CONTENT_TYPE = "image/png"
_ID = re.compile(r"^[0-9a-f]{32}$")


def screen_key(screen_name: str) -> str:
    return hashlib.sha256(screen_name.encode()).hexdigest()[:16]


def screenshot_id(screen_name: str, sha256_hex: str) -> str:
    tail = hashlib.sha256(f"{screen_name}\0{sha256_hex}".encode()).hexdigest()[:16]
    return screen_key(screen_name) + tail


def is_valid_id(value: str) -> bool:
    return bool(_ID.match(value))


def object_names(shot_id: str) -> tuple[str, str]:
    """(png, json) object names for an id (which must be valid)."""
    base = f"screens/{shot_id[:16]}/{shot_id}"
    return base + ".png", base + ".json"


def backdrop_name(shot_id: str) -> str:
    """The downscaled backdrop's object name for an id (which must be valid)."""
    return f"screens/{shot_id[:16]}/{shot_id}.backdrop.png"


@dataclass(frozen=True)
class Screenshot:
    """Stored metadata of one screenshot (ScreenScreenshot without the URL)."""

    screenshot_id: str
    screen_name: str
    width: int
    height: int
    uploaded_at: dt.datetime
    uploaded_by: str
    size_bytes: int
    sha256: str
    content_type: str = CONTENT_TYPE

    @classmethod
    def new(cls, screen_name: str, data: bytes, width: int, height: int, by: str) -> Screenshot:
        digest = hashlib.sha256(data).hexdigest()
        return cls(
            screenshot_id=screenshot_id(screen_name, digest),
            screen_name=screen_name,
            width=width,
            height=height,
            uploaded_at=dt.datetime.now(dt.UTC),
            uploaded_by=by,
            size_bytes=len(data),
            sha256=digest,
        )

    def to_json(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["uploaded_at"] = self.uploaded_at.isoformat()
        return json.dumps(data, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Screenshot:
        data = json.loads(raw)
        data["uploaded_at"] = dt.datetime.fromisoformat(data["uploaded_at"])
        return cls(**data)

    def to_proto(self, download_url: str = "") -> heatmap_pb2.ScreenScreenshot:
        message = heatmap_pb2.ScreenScreenshot(
            screenshot_id=self.screenshot_id,
            screen_name=self.screen_name,
            width=self.width,
            height=self.height,
            uploaded_by=self.uploaded_by,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            content_type=self.content_type,
            download_url=download_url,
        )
        message.uploaded_at.FromDatetime(self.uploaded_at)
        return message


class ScreenshotStore(Protocol):
    """Where screenshots live. Blocking calls: async callers use asyncio.to_thread.

    Backend failures raise ``heatmap.errors.Unavailable``.
    """

    def ensure_ready(self) -> None:
        """Create the bucket/directory if missing."""

    def put(self, shot: Screenshot, data: bytes, backdrop: bytes | None = None) -> Screenshot:
        """Store ``shot`` (and its backdrop); if the id exists already, return the stored one."""

    def get(self, shot_id: str) -> Screenshot | None: ...

    def read(self, shot_id: str) -> tuple[Screenshot, bytes] | None: ...

    def read_image(self, shot_id: str) -> bytes | None:
        """The original PNG bytes, without the metadata."""

    def read_backdrop(self, shot_id: str) -> bytes | None:
        """The downscaled backdrop, or None if none is stored."""

    def put_backdrop(self, shot_id: str, data: bytes) -> None: ...

    def list(self, screen_name: str) -> list[Screenshot]:
        """Screenshots of ``screen_name``, newest first."""

    def download_url(self, shot: Screenshot) -> str:
        """A time-limited GET URL, or "" where the store has none."""

    def close(self) -> None: ...


def _newest_first(shots: list[Screenshot]) -> list[Screenshot]:
    return sorted(shots, key=lambda s: (s.uploaded_at, s.screenshot_id), reverse=True)


class _ObjectLayout:
    """The layout above, on three primitives each backend provides.

    ``_read(name)`` returns None for a missing object; ``_write(name, data,
    content_type)``; ``_metadata_names(prefix)`` lists the ``.json`` objects
    under a screen's prefix. All raise ``Unavailable`` when the store is down.
    """

    def _read(self, name: str) -> bytes | None:
        raise NotImplementedError

    def _write(self, name: str, data: bytes, content_type: str) -> None:
        raise NotImplementedError

    def _metadata_names(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def get(self, shot_id: str) -> Screenshot | None:
        if not is_valid_id(shot_id):
            return None
        raw = self._read(object_names(shot_id)[1])
        return Screenshot.from_json(raw) if raw is not None else None

    def put(self, shot: Screenshot, data: bytes, backdrop: bytes | None = None) -> Screenshot:
        existing = self.get(shot.screenshot_id)
        if existing is not None:
            return existing
        png_name, json_name = object_names(shot.screenshot_id)
        self._write(png_name, data, CONTENT_TYPE)
        if backdrop is not None:
            self._write(backdrop_name(shot.screenshot_id), backdrop, CONTENT_TYPE)
        self._write(json_name, shot.to_json(), "application/json")  # last: see module doc
        return shot

    def read_image(self, shot_id: str) -> bytes | None:
        return self._read(object_names(shot_id)[0]) if is_valid_id(shot_id) else None

    def read_backdrop(self, shot_id: str) -> bytes | None:
        return self._read(backdrop_name(shot_id)) if is_valid_id(shot_id) else None

    def put_backdrop(self, shot_id: str, data: bytes) -> None:
        if not is_valid_id(shot_id):
            raise ValueError(f"not a screenshot id: {shot_id!r}")
        self._write(backdrop_name(shot_id), data, CONTENT_TYPE)

    def read(self, shot_id: str) -> tuple[Screenshot, bytes] | None:
        shot = self.get(shot_id)
        if shot is None:
            return None
        data = self._read(object_names(shot_id)[0])
        return (shot, data) if data is not None else None

    def list(self, screen_name: str) -> list[Screenshot]:
        shots = []
        for name in self._metadata_names(f"screens/{screen_key(screen_name)}/"):
            raw = self._read(name)
            if raw is None:
                continue
            shot = Screenshot.from_json(raw)
            if shot.screen_name == screen_name:  # screen_key is a 64-bit hash prefix
                shots.append(shot)
        return _newest_first(shots)


# ------------------------------------------------------------------- S3


class S3ScreenshotStore(_ObjectLayout):
    """S3 or MinIO through the minio SDK, with bounded timeouts and retries."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 15.0,
        retries: int = 1,
    ) -> None:
        if not settings.endpoint:
            raise ValueError("S3 endpoint is not configured")
        secure = settings.endpoint.startswith("https://")
        self._settings = settings
        self._bucket = settings.bucket
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            retries=urllib3.Retry(
                total=retries, backoff_factor=0.1, status_forcelist=(500, 502, 503, 504)
            ),
            maxsize=8,
        )
        self._client = Minio(
            settings.endpoint.split("://", 1)[1],
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=secure,
            region=settings.region,
            http_client=self._http,
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except S3Error:
            raise
        except Exception as e:  # urllib3/connection errors: the store is down
            raise Unavailable(f"object store unavailable ({what}): {e}") from e

    def ensure_ready(self) -> None:
        try:
            if not self._call("bucket_exists", self._client.bucket_exists, self._bucket):
                self._call("make_bucket", self._client.make_bucket, self._bucket)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise Unavailable(f"object store refused bucket {self._bucket}: {e}") from e

    def _read(self, name: str) -> bytes | None:
        try:
            response = self._call("get_object", self._client.get_object, self._bucket, name)
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return None
            raise Unavailable(f"object store error reading {name}: {e}") from e
        try:
            data: bytes = self._call("read", response.read)
            return data
        finally:
            response.close()
            response.release_conn()

    def _write(self, name: str, data: bytes, content_type: str) -> None:
        try:
            self._call(
                "put_object",
                self._client.put_object,
                self._bucket,
                name,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
            )
        except S3Error as e:
            raise Unavailable(f"object store error writing {name}: {e}") from e

    def _metadata_names(self, prefix: str) -> list[str]:
        try:
            objects = self._call(
                "list_objects",
                lambda: list(
                    self._client.list_objects(self._bucket, prefix=prefix, recursive=True)
                ),
            )
        except S3Error as e:
            raise Unavailable(f"object store error listing {prefix}: {e}") from e
        return [o.object_name for o in objects if o.object_name and o.object_name.endswith(".json")]

    def download_url(self, shot: Screenshot) -> str:
        url: str = self._client.presigned_get_object(
            self._bucket,
            object_names(shot.screenshot_id)[0],
            expires=dt.timedelta(seconds=self._settings.presign_ttl_s),
        )
        return url

    def close(self) -> None:
        self._http.clear()


# ----------------------------------------------------------- filesystem


class FileScreenshotStore(_ObjectLayout):
    """The same layout under a directory: the embedded mode (``heatmap dev``)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def ensure_ready(self) -> None:
        try:
            (self._root / "screens").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Unavailable(f"screenshot directory unusable: {e}") from e

    def _path(self, name: str) -> Path:
        return self._root / name

    def _read(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Unavailable(f"screenshot directory error reading {name}: {e}") from e

    def _write(self, name: str, data: bytes, content_type: str) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            raise Unavailable(f"screenshot directory error writing {name}: {e}") from e

    def _metadata_names(self, prefix: str) -> list[str]:
        try:
            return sorted(str(p.relative_to(self._root)) for p in self._path(prefix).glob("*.json"))
        except OSError as e:
            raise Unavailable(f"screenshot directory error listing: {e}") from e

    def download_url(self, shot: Screenshot) -> str:
        return ""

    def close(self) -> None:
        return None
