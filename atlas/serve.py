"""Serve: a read-only HTTP server for the atlas viewer, its tiles and a small JSON API.

Built on the standard library's :class:`http.server.ThreadingHTTPServer` (one thread per
connection, HTTP/1.1 keep-alive): a viewer on one machine fetches a few hundred small files a
minute, which it serves with millisecond latency (see ``benchmarks/bench_serve.py``), and it
adds no dependency. Small files are kept in a bounded in-memory cache keyed by (path, mtime,
size), so a rebuilt tile is picked up at once.

Routes (``GET`` and ``HEAD`` only; every other method gets 405)::

    /                                 the viewer (atlas/viewer/index.html)
    /atlas.json                       the atlases found under the served folder, with "api": true
                                      (an export writes the same file, with "api": false)
    /static/<path>                    viewer assets (JS, CSS, vendored Leaflet)
    /data/<run>/<path>                files of a tiles folder: manifest.json, {z}/{x}/{y}.jpg,
                                      meta/..., icons/... (sprites), thumbs/...
    /api/runs                         the atlases found under the served folder
    /api/class?run=&name=[&level=]    per-cell attribution to a class (for highlighting)
    /api/cell?run=&level=&id=         one cell: count, top classes with names, examples, URLs
    /api/classes?run=&q=[&limit=]     class names matching a query (autocomplete)
    /api/overlays?run=                photos placed on the atlas by `atlas explain --atlas`
                                      (the run's overlays/index.json; an empty list when none)

``<run>`` is the path of a tiles folder (one holding a ``manifest.json`` of kind
``atlas-tiles``) relative to the served folder, e.g. ``tiles`` or ``runA/tiles``; ``run`` may be
left out of API calls when only one atlas is served.

Security: the server only reads. Request paths are decoded once and refused (400) when they
hold ``..`` or ``.`` segments, empty segments, backslashes, NUL or control characters; files are
opened only after resolving symlinks and checking that the real path lies inside the tiles
folder (or the viewer folder), and only with known extensions; hidden files are never served.
Overlong URLs get 414, overlong or malformed query values 400, unknown hosts 400 (DNS
rebinding) while bound to loopback. Errors never carry a traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import threading
import time
import webbrowser
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from atlas.tiles import MANIFEST_KIND

log = logging.getLogger(__name__)

VIEWER_DIR = Path(__file__).resolve().parent / "viewer"
MAX_URL = 2048
MAX_QUERY_VALUE = 200
MAX_QUERY_FIELDS = 16
MAX_SCAN_DEPTH = 4
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
_COMPRESSIBLE = (".html", ".js", ".css", ".json", ".svg", ".txt")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class HTTPError(Exception):
    """An answer with a 4xx status; ``message`` is shown to the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Run:
    """One served atlas: a tiles folder below the served root."""

    id: str
    path: Path  # resolved
    manifest: dict[str, Any]
    mtime_ns: int
    name: str  # the run's name: its folder's, see run_name()

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": self.id,
            "name": self.name,
            "label": " · ".join(x for x in (self.name, m.get("layer", "")) if x),
            "title": m.get("title", ""),
            "model": m.get("model", ""),
            "layer": m.get("layer", ""),
            "complete": bool(m.get("complete", False)),
            "build": m.get("build", ""),
            "levels": [lv.get("size") for lv in m.get("levels", [])],
            "base": f"/data/{self.id}/",
        }


def run_name(root: Path, tiles_dir: Path) -> str:
    """The name a tiles folder is shown by: its run folder's (the folder holding ``tiles/``).

    ``runA/tiles`` -> ``runA``; serving a run folder ``demo`` (or ``demo/tiles`` itself) ->
    ``demo``; a tiles folder by another name keeps its own.
    """
    folder = tiles_dir.parent if tiles_dir.name == "tiles" else tiles_dir
    if root in folder.parents:
        return folder.relative_to(root).as_posix()
    return folder.name or "atlas"


def find_runs(root: Path, max_depth: int = MAX_SCAN_DEPTH) -> dict[str, Run]:
    """Tiles folders (with an ``atlas-tiles`` manifest) at most ``max_depth`` levels below ``root``.

    Folders whose real path leaves ``root`` (symlinks out) and hidden folders are skipped; the
    search does not descend into a tiles folder.
    """
    root = root.resolve()
    runs: dict[str, Run] = {}

    def visit(folder: Path, depth: int) -> None:
        manifest_path = folder / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = None
            if isinstance(manifest, dict) and manifest.get("kind") == MANIFEST_KIND:
                real = folder.resolve()
                if real == root or root in real.parents:
                    rel = real.relative_to(root).as_posix()
                    if rel == ".":  # the served folder is itself a tiles folder
                        rel = root.name if root.name and not root.name.startswith(".") else "atlas"
                    runs[rel] = Run(rel, real, manifest, manifest_path.stat().st_mtime_ns, run_name(root, real))
                return
        if depth >= max_depth:
            return
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in children:
            if entry.name.startswith(".") or entry.name.isdigit() or entry.name in ("thumbs", "icons", "meta"):
                continue
            try:
                if not entry.is_dir():
                    continue
                real = Path(entry.path).resolve()
            except OSError:
                continue
            if root in real.parents:
                visit(Path(entry.path), depth + 1)

    visit(root, 0)
    return runs


class _LRU:
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


class AtlasServer(ThreadingHTTPServer):
    """The HTTP server: holds the served root, the run registry and caches (no globals)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        root: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        cache_bytes: int = 64 << 20,
        max_connections: int = 128,
        rescan_seconds: float = 2.0,
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"{root} is not a folder; give a run folder (holding tiles/) or a folder of runs")
        self.files = _LRU(cache_bytes)
        self.parsed = _LRU(cache_bytes // 2)
        self.rescan_seconds = rescan_seconds
        self._runs: dict[str, Run] = find_runs(self.root)
        self._scanned = time.monotonic()
        self._runs_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self.loopback = host in _LOOPBACK_NAMES or host.startswith("127.")
        super().__init__((host, port), AtlasHandler)

    # -- registry

    def runs(self) -> dict[str, Run]:
        """The served atlases, rescanned at most every ``rescan_seconds`` (new runs appear)."""
        with self._runs_lock:
            if time.monotonic() - self._scanned > self.rescan_seconds:
                self._runs = find_runs(self.root)
                self._scanned = time.monotonic()
            return self._runs

    def run(self, run_id: str | None) -> Run:
        runs = self.runs()
        if run_id is None:
            if len(runs) == 1:
                return next(iter(runs.values()))
            raise HTTPError(400, f"several atlases are served; pass run= one of {sorted(runs)}")
        run = runs.get(run_id)
        if run is None:
            raise HTTPError(404, f"no atlas {run_id!r}; /api/runs lists them")
        # pick up a rebuilt manifest
        try:
            mtime = (run.path / "manifest.json").stat().st_mtime_ns
        except OSError as e:
            raise HTTPError(404, f"atlas {run_id!r} has gone") from e
        if mtime != run.mtime_ns:
            fresh = find_runs(self.root)
            with self._runs_lock:
                self._runs, self._scanned = fresh, time.monotonic()
            if run_id not in fresh:
                raise HTTPError(404, f"atlas {run_id!r} has gone")
            run = fresh[run_id]
        return run

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = "localhost" if host in ("127.0.0.1", "::1") else host
        return f"http://{shown}:{port}/"

    # -- connection limit

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("too many connections; refusing %s", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


def _check_segments(path: str) -> list[str]:
    """Split a decoded URL path into safe segments; raise 400 on anything suspicious."""
    if "\\" in path or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise HTTPError(400, "bad characters in path")
    parts = path.split("/")[1:]
    if any(p in ("", ".", "..") for p in parts[:-1]) or parts[-1] in (".", ".."):
        raise HTTPError(400, "path must not hold '.', '..' or empty segments")
    if any(p.startswith(".") for p in parts):
        raise HTTPError(404, "not found")
    return parts


def _inside(base: Path, parts: list[str]) -> Path:
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


class AtlasHandler(BaseHTTPRequestHandler):
    """Answers one connection's requests; state lives on :class:`AtlasServer`."""

    server: AtlasServer
    protocol_version = "HTTP/1.1"
    server_version = "atlas"
    timeout = 30  # idle keep-alive connections are closed after this many seconds
    # one buffered write per response (flushed by handle_one_request) and no Nagle delay: with
    # keep-alive, separate header and body writes would otherwise wait ~40 ms for a delayed ACK
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    # -- plumbing

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.address_string(), format % args)

    def __getattr__(self, name: str) -> Any:
        # any method other than GET/HEAD (POST, PUT, DELETE, PATCH, made-up ones) -> 405
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        self._send_error(HTTPError(405, f"{self.command} is not allowed: this server is read-only",
                                   {"Allow": "GET, HEAD"}))

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, head: bool) -> None:
        self._head = head
        try:
            self._route()
        except HTTPError as e:
            self._send_error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("error answering %r", self.path[:200])
            self._send_error(HTTPError(500, "internal error"))

    def _send_error(self, e: HTTPError) -> None:
        api = self.path.startswith("/api/")
        body = (json.dumps({"error": e.message, "status": e.status}) if api else f"{e.status} {e.message}\n").encode()
        try:
            self.send_response(e.status)
            self.send_header("Content-Type", "application/json" if api else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self._security_headers()
            for k, v in e.headers.items():
                self.send_header(k, v)
            if e.status >= 500 or e.status in (400, 405, 414):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not getattr(self, "_head", False) and self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _security_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")

    # -- routing

    def _route(self) -> None:
        raw = self.path
        if len(raw) > MAX_URL:
            raise HTTPError(414, f"URL longer than {MAX_URL} characters")
        if not raw.startswith("/") or raw.startswith("//"):
            raise HTTPError(400, "request target must be a path starting with a single '/'")
        self._check_host()
        path_part, _, query_part = raw.partition("?")
        path_part = path_part.partition("#")[0]
        if "%00" in path_part or "\x00" in raw:
            raise HTTPError(400, "NUL in path")
        try:
            path = unquote(path_part, errors="strict") if "%" in path_part else path_part
        except UnicodeDecodeError as e:
            raise HTTPError(400, "path is not valid UTF-8 after percent-decoding") from e
        query = self._parse_query(query_part.partition("#")[0])
        parts = _check_segments(path)
        if path in ("/", "/index.html"):
            return self._send_file(_inside(VIEWER_DIR, ["index.html"]), cache="no-cache")
        if path == "/atlas.json":  # the viewer's list of atlases, as an export writes it (with "api": false)
            return self._api_runs(query)
        head = parts[0]
        if head == "static" and len(parts) > 1:
            return self._send_file(_inside(VIEWER_DIR, parts[1:]), cache="no-cache")
        if head == "data" and len(parts) > 1:
            return self._data(parts[1:], query)
        if head == "api" and len(parts) == 2:
            handler = {
                "runs": self._api_runs,
                "class": self._api_class,
                "cell": self._api_cell,
                "classes": self._api_classes,
                "overlays": self._api_overlays,
            }.get(parts[1])
            if handler is None:
                raise HTTPError(404, f"no API /api/{parts[1]}; try /api/runs, /api/class, /api/cell, /api/classes, "
                                     "/api/overlays")
            return handler(query)
        raise HTTPError(404, "not found")

    def _check_host(self) -> None:
        if not self.server.loopback:
            return
        host = self.headers.get("Host")
        if host is None:
            return
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        if name not in _LOOPBACK_NAMES and not name.startswith("127."):
            raise HTTPError(400, "unexpected Host header; open the atlas at http://localhost:PORT/")

    @staticmethod
    def _parse_query(query: str) -> dict[str, str]:
        if not query:
            return {}
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=MAX_QUERY_FIELDS, errors="strict")
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"malformed query string ({e.__class__.__name__})") from e
        out: dict[str, str] = {}
        for k, v in pairs:
            if len(k) > 32 or len(v) > MAX_QUERY_VALUE:
                raise HTTPError(400, f"query value longer than {MAX_QUERY_VALUE} characters")
            if any(ord(ch) < 32 for ch in k + v):
                raise HTTPError(400, "control characters in query")
            out[k] = v
        return out

    def _data(self, parts: list[str], query: dict[str, str]) -> None:
        runs = self.server.runs()
        # the run id is a prefix of the path segments; take the longest that matches
        for n in range(min(len(parts) - 1, MAX_SCAN_DEPTH + 1), 0, -1):
            run_id = "/".join(parts[:n])
            if run_id in runs:
                run = runs[run_id]
                rest = parts[n:]
                break
        else:
            raise HTTPError(404, "no such atlas; /api/runs lists them")
        immutable = "v" in query and bool(query["v"])
        self._send_file(_inside(run.path, rest), cache="immutable" if immutable else "no-cache")

    # -- static files

    def _send_file(self, path: Path, cache: str) -> None:
        st = path.stat()
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        ctype = CONTENT_TYPES[path.suffix.lower()]
        gz = path.suffix.lower() in _COMPRESSIBLE and "gzip" in self.headers.get("Accept-Encoding", "") and st.st_size > 1024
        if gz:
            etag = etag[:-1] + '-gz"'
        headers = {
            "Content-Type": ctype,
            "ETag": etag,
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Cache-Control": "public, max-age=31536000, immutable" if cache == "immutable" else "no-cache",
        }
        if path.suffix.lower() in _COMPRESSIBLE:
            headers["Vary"] = "Accept-Encoding"
        if path.suffix.lower() == ".html":
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

    def _send_json(self, obj: Any) -> None:
        body = json.dumps(obj, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        etag = '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"'
        headers["ETag"] = etag
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self._security_headers()
            self.end_headers()
            return
        if len(body) > 1024 and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=5, mtime=0)
            headers["Content-Encoding"] = "gzip"
        self._send_bytes(200, body, headers)

    # -- API

    def _api_runs(self, query: dict[str, str]) -> None:
        runs = self.server.runs()
        self._send_json({"api": True, "runs": [run.describe() for _id, run in sorted(runs.items())]})

    def _level(self, run: Run, query: dict[str, str]) -> dict[str, Any]:
        if not query.get("level"):
            raise HTTPError(400, "pass level= (a grid size of the atlas)")
        size = _parse_int(query["level"], "level", 1, 1 << 20)
        for level in run.manifest.get("levels", []):
            if level.get("size") == size:
                return level
        sizes = [lv.get("size") for lv in run.manifest.get("levels", [])]
        raise HTTPError(404, f"no grid level {size}; this atlas has {sizes}")

    def _region(self, run: Run, level: dict[str, Any], ry: int, rx: int) -> dict[str, Any] | None:
        if [ry, rx] not in level.get("regions", []):
            return None
        rel = str(level["meta_url"]).format(ry=ry, rx=rx).split("/")
        path = _inside(run.path, rel)
        st = path.stat()
        key = ("region", str(path), st.st_mtime_ns)
        doc = self.server.parsed.get(key)
        if doc is None:
            doc = json.loads(path.read_bytes())
            self.server.parsed.put(key, doc, st.st_size * 4)
        return doc

    def _api_cell(self, query: dict[str, str]) -> None:
        run = self.server.run(query.get("run"))
        level = self._level(run, query)
        size = int(level["size"])
        cell_id = _parse_int(query.get("id"), "id", 0, size * size - 1)
        iy, ix = divmod(cell_id, size)
        r = int(level.get("region", 40))
        doc = self._region(run, level, iy // r, ix // r)
        cell = next((c for c in doc["cells"] if c["id"] == cell_id), None) if doc else None
        if cell is None:
            raise HTTPError(404, f"grid {size} has no cell {cell_id} (too few activations landed there)")
        names = doc["names"] if doc else {}
        base = f"/data/{run.id}/"
        self._send_json({
            "run": run.id,
            "level": size,
            **{k: cell[k] for k in ("id", "iy", "ix", "count", "done", "center", "examples")},
            "top": [{"class": c, "name": names.get(str(c), f"class {c}"), "value": v} for c, v in cell["top"]],
            "thumbs": [base + t if t else None for t in cell.get("thumbs", [])],
            "icon": {**cell["icon"], "sprite": base + cell["icon"]["sprite"]} if cell.get("icon") else None,
        })

    def _class_index(self, run: Run, query: dict[str, str]) -> tuple[int, str]:
        name = query.get("name") or query.get("q")
        if not name:
            raise HTTPError(400, "pass name= (a class name, WordNet id or index)")
        from atlas.resources import class_index

        classes = list(run.manifest.get("classes", []))
        try:
            idx = class_index(name, classes or None)
        except ValueError as e:
            raise HTTPError(404, str(e)) from e
        return idx, classes[idx] if idx < len(classes) else f"class {idx}"

    def _level_attribution(self, run: Run, level: dict[str, Any]) -> dict[int, tuple[list[int], list[float]]]:
        key = ("classes", run.id, run.mtime_ns, level["size"])
        index = self.server.parsed.get(key)
        if index is None:
            index = {}
            nbytes = 0
            for ry, rx in level.get("regions", []):
                doc = self._region(run, level, ry, rx)
                for cell in doc["cells"] if doc else []:
                    for c, v in cell["top"]:
                        ids, values = index.setdefault(c, ([], []))
                        ids.append(cell["id"])
                        values.append(v)
                        nbytes += 64
            self.server.parsed.put(key, index, nbytes)
        return index

    def _api_class(self, query: dict[str, str]) -> None:
        run = self.server.run(query.get("run"))
        idx, name = self._class_index(run, query)
        one = self._level(run, query) if query.get("level") else None
        levels = [one] if one is not None else list(run.manifest.get("levels", []))
        out = {}
        for level in levels:
            ids, values = self._level_attribution(run, level).get(idx, ([], []))
            cells = [[i, v] for i, v in zip(ids, values) if v > 0]
            out[str(level["size"])] = {"max": max((v for _i, v in cells), default=0.0), "cells": cells}
        result: dict[str, Any] = {"run": run.id, "class": {"index": idx, "name": name}}
        if one is not None:
            result.update(level=one["size"], **out[str(one["size"])])
        else:
            result["levels"] = out
        self._send_json(result)

    def _api_classes(self, query: dict[str, str]) -> None:
        runs = self.server.runs()
        run = self.server.run(query.get("run")) if query.get("run") or len(runs) == 1 else None
        if run is not None:
            classes = list(run.manifest.get("classes", []))
        else:
            from atlas.resources import imagenet_class_names

            classes = imagenet_class_names()
        q = query.get("q", "").strip().lower()
        limit = _parse_int(query.get("limit", "20"), "limit", 1, 1000)
        starts = [i for i, n in enumerate(classes) if n.lower().startswith(q)]
        contains = [i for i, n in enumerate(classes) if q in n.lower() and not n.lower().startswith(q)]
        hits = (starts + contains)[:limit]
        self._send_json({"classes": [{"index": i, "name": classes[i]} for i in hits]})


    def _api_overlays(self, query: dict[str, str]) -> None:
        run = self.server.run(query.get("run"))
        index = run.path / "overlays" / "index.json"
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
            entries = doc["overlays"] if isinstance(doc, dict) else []
        except (OSError, ValueError, KeyError):
            entries = []
        ok = [
            {k: e[k] for k in ("name", "file", "photo", "class", "probability") if k in e}
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("file"), str)
            and e["file"].startswith("overlays/") and e["file"].endswith(".json") and ".." not in e["file"]
        ]
        self._send_json({"overlays": ok})


def _parse_int(value: str | None, name: str, lo: int, hi: int) -> int:
    if value is None or value == "":
        raise HTTPError(400, f"pass {name}= (an integer)")
    if len(value) > 12 or not value.isascii() or not value.lstrip("-").isdigit():
        raise HTTPError(400, f"{name} must be an integer, not {value[:20]!r}")
    number = int(value)
    if not lo <= number <= hi:
        raise HTTPError(400, f"{name} must be between {lo} and {hi}, not {number}")
    return number


def make_server(
    run_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    cache_bytes: int = 64 << 20,
    max_connections: int = 128,
    require_runs: bool = True,
) -> AtlasServer:
    """Bind an :class:`AtlasServer` (``port=0`` picks a free port); call ``serve_forever()`` on it.

    Raises ``ValueError`` when ``run_dir`` holds no tiles folder and ``require_runs`` is set.
    """
    try:
        server = AtlasServer(run_dir, host, port, cache_bytes=cache_bytes, max_connections=max_connections)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {host}:{port} ({e.strerror}); pass another port "
                               "(--port 0 picks a free one) or stop the program using it") from e
    if require_runs and not server.runs():
        server.server_close()
        raise ValueError(
            f"no atlas tiles under {run_dir} (searched {MAX_SCAN_DEPTH} folders deep for tiles/manifest.json); "
            "build them with `atlas tiles RUN/cells.h5 RUN/icons.h5 -o RUN/tiles` or `atlas run CONFIG`"
        )
    return server


def serve(
    run_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    open_browser: bool = False,
    cache_bytes: int = 64 << 20,
    max_connections: int = 128,
    ready: Callable[[AtlasServer], None] | None = None,
) -> None:
    """Serve the atlases under ``run_dir`` until interrupted (Ctrl-C).

    Args:
        run_dir: a run folder (holding ``tiles/``), a tiles folder, or a folder of runs.
        host: address to bind; the default is loopback only. ``"0.0.0.0"`` shares the atlas with
            the network (read-only, but anyone who can reach the port can browse it).
        port: TCP port; 0 picks a free one.
        open_browser: open the viewer in the default web browser.
        cache_bytes: in-memory cache for small files.
        max_connections: simultaneous connections; more are closed at once.
        ready: called with the bound server before serving (tests, embedding).
    """
    server = make_server(run_dir, host, port, cache_bytes=cache_bytes, max_connections=max_connections)
    if not server.loopback:
        log.warning("serving on %s: anyone who can reach this address can browse the atlas", host)
    runs = server.runs()
    log.info("serving %d atlas%s from %s at %s (Ctrl-C to stop)", len(runs), "es" if len(runs) != 1 else "",
             server.root, server.url)
    if ready is not None:
        ready(server)
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()


__all__ = ["AtlasHandler", "AtlasServer", "HTTPError", "Run", "find_runs", "make_server", "run_name", "serve"]
