"""Serve: a read-only HTTP server for the atlas viewer, its tiles and a small JSON API.

Built on the standard library's :class:`http.server.ThreadingHTTPServer` (one thread per
connection, HTTP/1.1 keep-alive): a viewer on one machine fetches a few hundred small files a
minute, which it serves with millisecond latency (see ``benchmarks/bench_serve.py``), and it
adds no dependency. Small files are kept in a bounded in-memory cache keyed by (path, mtime,
size), so a rebuilt tile is picked up at once.

Modules: :mod:`~atlas.web.serve.runs` (which atlases a folder holds), :mod:`~atlas.web.serve.files`
(static files, safely), :mod:`~atlas.web.serve.api` (the JSON API and the functions ``atlas export``
shares), :mod:`~atlas.web.serve.attacks` (attack reports placed on a comparison atlas),
:mod:`~atlas.web.serve.server` (the server, routing, :func:`serve`).

Routes (``GET`` and ``HEAD`` only; every other method gets 405)::

    /                                 the viewer (atlas/web/viewer/index.html)
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
    /api/attacks?run=                 a comparison atlas (RUN/compare/<a>--<b>/tiles): where the
                                      cells chosen by `atlas attack` for its two classes (the
                                      reports in RUN/attacks/*/) lie on it; 404 for other atlases

``<run>`` is the path of a tiles folder (one holding a ``manifest.json`` of kind
``atlas-tiles``) relative to the served folder, e.g. ``tiles`` or ``runA/tiles``; ``run`` may be
left out of API calls when only one atlas is served.

Security: the server only reads. Request paths are decoded once and refused (400) when they
hold ``..`` or ``.`` segments, empty segments, backslashes, NUL or control characters; files are
opened only after resolving symlinks and checking that the real path lies inside the tiles
folder (or the viewer folder), and only with known extensions; hidden files are never served.
Overlong URLs get 414, overlong or malformed query values 400. While bound to loopback, a Host
header other than ``localhost``, a 127.0.0.0/8 address as a dotted quad or ``[::1]`` (each with an
optional port) gets 400, so a name that resolves to 127.0.0.1 cannot read the atlas (DNS
rebinding; ``127.evil.com`` is not a loopback address); bound to another address (``--host
0.0.0.0``) any Host is answered. A request with more than one Host header gets 400. A run is
named in URLs percent-encoded (``base`` in ``/api/runs``); the path is decoded once, before the
checks above. Pages carry a content security policy (:data:`~atlas.web.serve.files.CSP`; an export
puts it in a ``<meta>`` tag). Errors never carry a traceback.
"""

from atlas.web.serve.errors import HTTPError
from atlas.web.serve.files import VIEWER_DIR
from atlas.web.serve.runs import Run, find_runs, run_name
from atlas.web.serve.server import AtlasHandler, AtlasServer, make_server, serve

__all__ = ["VIEWER_DIR", "AtlasHandler", "AtlasServer", "HTTPError", "Run", "find_runs", "make_server", "run_name",
           "serve"]
