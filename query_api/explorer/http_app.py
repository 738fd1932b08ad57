"""The explorer's HTTP surface, one ASGI app: page, RPCs, health.

    GET  /                                 -> 308 to /explorer/
    GET  /explorer                         -> 308 to /explorer/
    GET  /explorer/                        -> static/index.html
    GET  /explorer/<file>                  -> static/<file> (package data; no internet at run time)
    POST /heatmap.v1.HeatmapService/<RPC>  -> Connect RPC (``connect_app``)
    GET  /healthz                          -> 200 while the query service is healthy, else 503

Static files are read from the package folder once per change (their
modification time) and served with a strong ETag and ``Cache-Control:
no-cache``: browsers revalidate and get 304 while nothing changed, and a
new release is seen at once although the file names carry no hash. Only
names from a fixed extension table are served, with that table's content
type; dot-files, folders and anything outside the folder are 404.

Request bodies are bounded while the RPC layer reads them: a declared
``Content-Length`` over the limit fails before a byte is read, and a chunked
body as soon as it passes the limit, both as a Connect
``resource_exhausted`` error (HTTP 429), so the page shows a real error.
"""

from __future__ import annotations

import hashlib
import mimetypes
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATIC_DIR = Path(__file__).resolve().parent / "static"
EXPLORER_PREFIX = "/explorer/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
# The page talks only to its own origin; nothing is loaded from elsewhere.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
]


@dataclass(frozen=True)
class _File:
    mtime_ns: int
    body: bytes
    etag: bytes


class StaticFiles:
    """The files of one folder, cached in memory while unchanged on disk."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        self._cache: dict[Path, _File] = {}

    def find(self, rel: str) -> tuple[_File, str] | None:
        """(file, content type) for a path relative to the folder, or None."""
        parts = rel.split("/")
        if any(not p or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None
        path = self._root.joinpath(*parts)
        content_type = CONTENT_TYPES.get(path.suffix.lower())
        if content_type is None:
            return None
        try:
            resolved = path.resolve()
            if not resolved.is_relative_to(self._root) or not resolved.is_file():
                return None
            mtime = resolved.stat().st_mtime_ns
            cached = self._cache.get(resolved)
            if cached is None or cached.mtime_ns != mtime:
                body = resolved.read_bytes()
                etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'.encode()
                cached = _File(mtime, body, etag)
                self._cache[resolved] = cached
        except OSError:
            return None
        return cached, content_type


def explorer_app(
    rpc: ASGIApp,
    healthy: Callable[[], bool],
    *,
    max_body_bytes: int,
    static_dir: Path = STATIC_DIR,
) -> ASGIApp:
    """The ASGI app above: ``rpc`` answers the Connect paths."""
    files = StaticFiles(static_dir)
    rpc_prefix = "/heatmap.v1.HeatmapService/"
    # mimetypes is not consulted for serving (the table above is): registering
    # the table keeps any library that guesses in agreement with it.
    for ext, ctype in CONTENT_TYPES.items():
        mimetypes.add_type(ctype.split(";")[0], ext)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(rpc_prefix):
            await _bounded(rpc, max_body_bytes)(scope, receive, send)
        elif path in ("/", "/explorer"):
            await _plain(send, 308, b"", [(b"location", EXPLORER_PREFIX.encode())])
        elif path == "/healthz":
            ok = healthy()
            await _plain(send, 200 if ok else 503, b"ok\n" if ok else b"not serving\n")
        elif path.startswith(EXPLORER_PREFIX):
            if method not in ("GET", "HEAD"):
                await _plain(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
                return
            rel = path.removeprefix(EXPLORER_PREFIX) or "index.html"
            found = files.find(rel)
            if found is None:
                await _plain(send, 404, b"not found\n")
                return
            file, content_type = found
            headers = [
                (b"content-type", content_type.encode()),
                (b"cache-control", b"no-cache"),
                (b"etag", file.etag),
                *SECURITY_HEADERS,
            ]
            if _header(scope, b"if-none-match") == file.etag:
                await _plain(send, 304, b"", headers, head=True)
                return
            body = b"" if method == "HEAD" else file.body
            headers.append((b"content-length", str(len(file.body)).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        else:
            await _plain(send, 404, b"not found\n")

    return app


def _bounded(inner: ASGIApp, limit: int) -> ASGIApp:
    """``inner`` reading at most ``limit`` body bytes: past it, the read fails with
    RESOURCE_EXHAUSTED, which the RPC layer answers as a Connect error."""
    too_large = ConnectError(Code.RESOURCE_EXHAUSTED, f"request body larger than {limit} bytes")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        declared = _header(scope, b"content-length")
        over = declared is not None and (not declared.isdigit() or int(declared) > limit)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            if over:  # refused before a byte is read
                raise too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large
            return message

        await inner(scope, limited, send)

    return app


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            found: bytes = value
            return found
    return None


async def _plain(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    head: bool = False,
) -> None:
    all_headers = list(headers or [])
    if not head:
        all_headers += [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
