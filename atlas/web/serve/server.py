"""The HTTP server: :class:`AtlasServer` (registry, caches, connection limit) and the handler that
routes each request to the static files (:mod:`atlas.web.serve.files`) or the JSON API
(:mod:`atlas.web.serve.api`); plus :func:`make_server` and :func:`serve`.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from atlas.checks import between
from atlas.web.serve.api import JsonApi
from atlas.web.serve.errors import HTTPError
from atlas.web.serve.files import LRU, VIEWER_DIR, StaticFiles, check_segments, inside
from atlas.web.serve.runs import MAX_SCAN_DEPTH, Run, find_runs

log = logging.getLogger("atlas.web.serve")

MAX_URL = 2048
MAX_QUERY_VALUE = 200
MAX_QUERY_FIELDS = 16
#: a Host header: a name or dotted quad, or an IPv6 address in brackets, and an optional port
_HOST = re.compile(r"(?P<name>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


def is_loopback(host: str) -> bool:
    """Whether a bind address is loopback: ``localhost``, a 127.0.0.0/8 address or ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopback_host_header(value: str) -> bool:
    """Whether a Host header names this machine's loopback and nothing else: ``localhost``, a
    127.0.0.0/8 address written as a dotted quad, or ``[::1]``, each with an optional port.

    Names that only start like one (``127.evil.com``, ``127.0.0.1.nip.io``) resolve wherever
    their owner wants: a page there could read the atlas through DNS rebinding.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    name = match["name"].lower()
    if name == "localhost":
        return True
    try:
        if name.startswith("["):
            return ipaddress.IPv6Address(name[1:-1]) == ipaddress.IPv6Address("::1")
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


class ListenError(OSError, ValueError):
    """The server cannot listen on the address asked for (in use, not allowed, unknown host);
    the message says what to change."""


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
        embeddable: bool = False,
    ):
        self.root = Path(root).resolve()
        self.embeddable = embeddable  # the viewer may be shown in a frame of another origin
        if not self.root.is_dir():
            raise ValueError(f"{root} is not a folder; give a run folder (holding tiles/) or a folder of runs")
        self.files = LRU(cache_bytes)
        self.parsed = LRU(cache_bytes // 2)
        self.rescan_seconds = rescan_seconds
        self._runs: dict[str, Run] = find_runs(self.root)
        self._scanned = time.monotonic()
        self._runs_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self.loopback = is_loopback(host)
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


class AtlasHandler(StaticFiles, JsonApi, BaseHTTPRequestHandler):
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
        parts = check_segments(path)
        if path in ("/", "/index.html"):
            return self._send_file(inside(VIEWER_DIR, ["index.html"]), cache="no-cache")
        if path == "/atlas.json":  # the viewer's list of atlases, as an export writes it (with "api": false)
            return self._api_runs(query)
        head = parts[0]
        if head == "static" and len(parts) > 1:
            return self._send_file(inside(VIEWER_DIR, parts[1:]), cache="no-cache")
        if head == "data" and len(parts) > 1:
            return self._data(parts[1:], query)
        if head == "api" and len(parts) == 2:
            handler = {
                "runs": self._api_runs,
                "class": self._api_class,
                "cell": self._api_cell,
                "classes": self._api_classes,
                "overlays": self._api_overlays,
                "channels": self._api_channels,
                "attacks": self._api_attacks,
            }.get(parts[1])
            if handler is None:
                raise HTTPError(404, f"no API /api/{parts[1]}; try /api/runs, /api/class, /api/cell, /api/classes, "
                                     "/api/overlays, /api/channels, /api/attacks")
            return handler(query)
        raise HTTPError(404, "not found")

    def _check_host(self) -> None:
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:  # RFC 9112: a request with more than one Host header is answered 400
            raise HTTPError(400, "more than one Host header")
        if not self.server.loopback or not hosts:
            return
        if not loopback_host_header(hosts[0].strip()):
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
        self._send_file(inside(run.path, rest), cache="immutable" if immutable else "no-cache")


def make_server(
    run_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    cache_bytes: int = 64 << 20,
    max_connections: int = 128,
    require_runs: bool = True,
    embeddable: bool = False,
) -> AtlasServer:
    """Bind an :class:`AtlasServer` (``port=0`` picks a free port); call ``serve_forever()`` on it.

    ``embeddable`` lets pages of other origins show the viewer in a frame (a notebook's output);
    by default the page refuses to be framed. Raises ``ValueError`` when ``run_dir`` holds no
    tiles folder and ``require_runs`` is set, a :class:`~atlas.checks.SettingError` for a port
    outside 0..65535 and a :class:`ListenError` when the address cannot be listened on.
    """
    between("port", port, 0, 65535, " (0 picks a free one)")
    try:
        server = AtlasServer(run_dir, host, port, cache_bytes=cache_bytes, max_connections=max_connections,
                             embeddable=embeddable)
    except OSError as e:
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
            raise ListenError(e.errno, f"cannot listen on {host}:{port} ({e.strerror}); pass an address of this "
                                       "machine (--host; 127.0.0.1 is this machine only)") from e
        raise ListenError(e.errno, f"cannot listen on {host}:{port} ({e.strerror}); pass another port "
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
    for run_id, run in runs.items():
        for warning in run.warnings:
            log.warning("atlas %s is out of date: %s", run_id, warning)
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


__all__ = ["AtlasHandler", "AtlasServer", "ListenError", "make_server", "serve"]
