"""Static files: the viewer's assets and the files of tiles folders, safely, with HTTP caching.

A request path is split into segments by :func:`check_segments` (400 on ``..``/``.``/empty
segments, backslashes, control characters; 404 on hidden names) and opened only through
:func:`inside`, which resolves symlinks and refuses real paths outside the base folder and
unknown extensions. :class:`StaticFiles` (a mixin of the request handler) answers with ETag /
Last-Modified revalidation, gzip for text, and a bounded in-memory cache (:class:`LRU`) keyed by
(path, mtime, size), so a rebuilt tile is picked up at once.
"""

from __future__ import annotations

import gzip
import threading
from collections import OrderedDict
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from atlas.web.serve.errors import HTTPError

VIEWER_DIR = Path(__file__).resolve().parent.parent / "viewer"
CACHE_FILE_LIMIT = 2 << 20
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
COMPRESSIBLE = (".html", ".js", ".css", ".json", ".svg", ".txt")
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
#: the same for a server made to be embedded (``embeddable``: a notebook's iframe on another port)
CSP_EMBEDDABLE = CSP.replace("frame-ancestors 'none'", "frame-ancestors *")
#: the policy of an exported page, in its ``<meta http-equiv>`` tag: :data:`CSP` less
#: ``frame-ancestors``, which browsers ignore there (only a header can refuse framing)
CSP_META = "; ".join(d for d in CSP.split("; ") if not d.startswith("frame-ancestors"))


class LRU:
    """A thread-safe LRU of values with a byte budget."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Any, value: Any, nbytes: int) -> None:
        if nbytes > self.max_bytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old[1]
            self._items[key] = (value, nbytes)
            self.size += nbytes
            while self.size > self.max_bytes and self._items:
                _k, (_v, n) = self._items.popitem(last=False)
                self.size -= n



def check_segments(path: str) -> list[str]:
    """Split a decoded URL path into safe segments; raise 400 on anything suspicious."""
    if "\\" in path or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise HTTPError(400, "bad characters in path")
    parts = path.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise HTTPError(400, "path must not hold '.', '..' or empty segments")
    if any(p.startswith(".") for p in parts):
        raise HTTPError(404, "not found")
    return parts


def inside(base: Path, parts: list[str]) -> Path:
    """The real path of ``base/parts`` if it is a regular file inside ``base`` (symlinks resolved)."""
    candidate = base.joinpath(*parts)
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # missing, or a symlink loop
        raise HTTPError(404, "not found") from e
    if base not in real.parents:
        raise HTTPError(403, "outside the served folder")
    if not real.is_file():
        raise HTTPError(404, "not found")
    if real.suffix.lower() not in CONTENT_TYPES:
        raise HTTPError(404, "not found")
    return real



class FileServer(Protocol):
    """What :class:`StaticFiles` needs of its server (:class:`~atlas.web.serve.server.AtlasServer` has it)."""

    files: LRU
    embeddable: bool


class StaticFiles:
    """Mixin of the request handler: sending files and byte bodies."""

    server: FileServer
    _head: bool

    def _security_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")

    def _send_file(self, path: Path, cache: str) -> None:
        st = path.stat()
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        ctype = CONTENT_TYPES[path.suffix.lower()]
        gz = path.suffix.lower() in COMPRESSIBLE and "gzip" in self.headers.get("Accept-Encoding", "") and st.st_size > 1024
        if gz:
            etag = etag[:-1] + '-gz"'
        headers = {
            "Content-Type": ctype,
            "ETag": etag,
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Cache-Control": "public, max-age=31536000, immutable" if cache == "immutable" else "no-cache",
        }
        if path.suffix.lower() in COMPRESSIBLE:
            headers["Vary"] = "Accept-Encoding"
        if path.suffix.lower() == ".html":
            if self.server.embeddable:
                headers["Content-Security-Policy"] = CSP_EMBEDDABLE
            else:
                headers["Content-Security-Policy"] = CSP
                headers["X-Frame-Options"] = "DENY"
        if self._not_modified(etag, st.st_mtime):
            self.send_response(304)
            for k in ("ETag", "Last-Modified", "Cache-Control"):
                self.send_header(k, headers[k])
            self._security_headers()
            self.end_headers()
            return
        key = (str(path), st.st_mtime_ns, st.st_size, gz)
        body = self.server.files.get(key)
        if body is None:
            if st.st_size > CACHE_FILE_LIMIT and not gz:
                return self._stream(path, st.st_size, headers)
            body = path.read_bytes()
            if gz:
                body = gzip.compress(body, compresslevel=6, mtime=0)
            self.server.files.put(key, body, len(body))
        if gz:
            headers["Content-Encoding"] = "gzip"
        self._send_bytes(200, body, headers)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return etag in [t.strip() for t in inm.split(",")] or inm.strip() == "*"
        ims = self.headers.get("If-Modified-Since")
        if ims:
            try:
                return int(mtime) <= parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError, OverflowError):
                return False
        return False

    def _stream(self, path: Path, size: int, headers: dict[str, str]) -> None:
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(size))
        self._security_headers()
        self.end_headers()
        if self._head:
            return
        with path.open("rb") as f:
            while chunk := f.read(1 << 16):
                self.wfile.write(chunk)

    def _send_bytes(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self._security_headers()
        self.end_headers()
        if not self._head:
            self.wfile.write(body)


__all__ = ["CONTENT_TYPES", "CSP", "CSP_EMBEDDABLE", "CSP_META", "LRU", "FileServer", "StaticFiles", "VIEWER_DIR", "check_segments",
           "inside"]
