"""The HTTP server: pages, tiles with caching headers, the JSON API, and every refusal."""

from __future__ import annotations

import gzip
import http.client
import inspect
import json
import shutil
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest

from atlas.stages.tiles import build_tiles
from atlas.web.serve import make_server, serve
from atlasfixture import write_fake_run


def _build(run_dir: Path, seed: int = 0) -> None:
    run = write_fake_run(run_dir, sizes=(4, 8, 16), icon_size=16, done_fraction=0.8, seed=seed, n_images=12)
    build_tiles(run.cells, run.icons, run_dir / "tiles", activations_path=run.activations, tile_size=64,
                progress=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served run folder with one atlas, plus a secret file beside it and hostile symlinks inside."""
    base = tmp_path_factory.mktemp("serve")
    run_dir = base / "run"
    _build(run_dir)
    secret = base / "secret.json"
    secret.write_text('{"secret": 1}')
    outside = base / "outside"
    outside.mkdir()
    (outside / "leak.json").write_text('{"leak": 1}')
    tiles = run_dir / "tiles"
    (tiles / "evil.json").symlink_to(secret)
    (tiles / "evil_dir").symlink_to(outside, target_is_directory=True)
    (tiles / "inner.json").symlink_to(tiles / "manifest.json")  # inside: fine
    server = make_server(run_dir, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(server, method: str, target: str, headers: dict | None = None, body: bytes | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=headers is not None and "Host" in headers, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(server, target: str):
    status, headers, body = request(server, "GET", target)
    assert headers["content-type"] == "application/json", (target, status, body[:200])
    return status, json.loads(body)


# ---- pages, files and caching -----------------------------------------------------------------


def test_viewer_page_and_assets(site):
    status, headers, body = request(site, "GET", "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'src="static/atlas.js"' in body and b"leaflet.js" in body  # relative: an export works from any path
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    for path, ctype in [("/static/atlas.js", "text/javascript; charset=utf-8"), ("/static/atlas.css", "text/css; charset=utf-8"),
                        ("/static/vendor/leaflet/leaflet.js", "text/javascript; charset=utf-8"),
                        ("/static/vendor/leaflet/leaflet.css", "text/css; charset=utf-8")]:
        status, headers, body = request(site, "GET", path)
        assert status == 200 and headers["content-type"] == ctype and len(body) > 1000, path
    assert b"https://" not in request(site, "GET", "/")[2]  # nothing fetched from a CDN


def test_tile_content_type_etag_and_304(site):
    status, headers, body = request(site, "GET", "/data/tiles/0/0/0.jpg")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
    assert int(headers["content-length"]) == len(body)
    assert headers["cache-control"] == "no-cache" and headers["etag"] and headers["last-modified"]
    status, h2, body2 = request(site, "GET", "/data/tiles/0/0/0.jpg", {"If-None-Match": headers["etag"]})
    assert status == 304 and body2 == b"" and h2["etag"] == headers["etag"]
    status, _h, _b = request(site, "GET", "/data/tiles/0/0/0.jpg", {"If-Modified-Since": headers["last-modified"]})
    assert status == 304
    status, _h, _b = request(site, "GET", "/data/tiles/0/0/0.jpg", {"If-None-Match": '"other"'})
    assert status == 200
    # versioned URLs (the viewer adds ?v=<build>) may be cached for good
    status, h3, _b = request(site, "GET", "/data/tiles/0/0/0.jpg?v=abc")
    assert status == 200 and "immutable" in h3["cache-control"]
    status, h4, body4 = request(site, "HEAD", "/data/tiles/0/0/0.jpg")
    assert status == 200 and body4 == b"" and h4["content-length"] == str(len(body))


def test_metadata_thumbnails_icons(site):
    status, manifest = get_json(site, "/data/tiles/manifest.json")
    assert status == 200 and manifest["kind"] == "atlas-tiles"
    status, headers, body = request(site, "GET", "/data/tiles/manifest.json", {"Accept-Encoding": "gzip"})
    assert headers["content-encoding"] == "gzip" and json.loads(gzip.decompress(body)) == manifest
    status, doc = get_json(site, "/data/tiles/meta/8/0-0.json")
    cell = next(c for c in doc["cells"] if c["thumbs"] and c["icon"])
    status, headers, body = request(site, "GET", "/data/tiles/" + cell["thumbs"][0])
    assert status == 200 and headers["content-type"] == "image/jpeg"
    status, headers, _b = request(site, "GET", "/data/tiles/" + cell["icon"]["sprite"])
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert request(site, "GET", "/data/tiles/inner.json")[0] == 200  # a symlink that stays inside


def test_api_runs(site):
    status, data = get_json(site, "/api/runs")
    assert status == 200
    (run,) = data["runs"]
    assert run["id"] == "tiles" and run["base"] == "/data/tiles/" and run["layer"] == "mixed4c"
    assert run["levels"] == [4, 8, 16] and run["name"] == "run"  # the served run folder's name, not "tiles"
    # the viewer reads atlas.json: the same list, saying that the API answers
    status, doc = get_json(site, "/atlas.json")
    assert status == 200 and doc == {"api": True, **data}


def test_api_cell(site):
    _s, doc = get_json(site, "/data/tiles/meta/16/0-0.json")
    want = max(doc["cells"], key=lambda c: c["count"])
    status, cell = get_json(site, f"/api/cell?level=16&id={want['id']}")
    assert status == 200 and cell["count"] == want["count"] and (cell["iy"], cell["ix"]) == (want["iy"], want["ix"])
    assert cell["top"][0]["name"] == doc["names"][str(want["top"][0][0])]
    assert all(t is None or t.startswith("/data/tiles/thumbs/") for t in cell["thumbs"])
    assert request(site, "GET", cell["thumbs"][0])[0] == 200
    if want["done"]:
        assert cell["icon"]["sprite"].startswith("/data/tiles/icons/16/") and request(site, "GET", cell["icon"]["sprite"])[0] == 200
    # the same with an explicit run
    assert get_json(site, f"/api/cell?run=tiles&level=16&id={want['id']}")[1] == cell


def test_api_class_matches_metadata(site):
    status, data = get_json(site, "/api/class?name=pizza&level=8")
    assert status == 200 and data["class"] == {"index": 963, "name": "pizza"} and data["level"] == 8
    _s, doc = get_json(site, "/data/tiles/meta/8/0-0.json")
    expected = {c["id"]: v for c in doc["cells"] for k, v in c["top"] if k == 963 and v > 0}
    assert dict((i, v) for i, v in data["cells"]) == expected and data["max"] == max(expected.values())
    # all levels at once, by index or name in any case
    status, every = get_json(site, "/api/class?name=PIZZA")
    assert set(every["levels"]) == {"4", "8", "16"} and every["levels"]["8"]["cells"] == data["cells"]
    assert get_json(site, "/api/class?name=963&level=8")[1]["cells"] == data["cells"]
    status, err = get_json(site, "/api/class?name=piza")
    assert status == 404 and "pizza" in err["error"]  # suggests the close match
    status, found = get_json(site, "/api/classes?q=golden&limit=5")
    assert status == 200 and found["classes"][0]["name"].startswith("golden")


def test_concurrent_requests(site):
    targets = [f"/data/tiles/3/{x}/{y}.jpg" for x in range(2) for y in range(2)] * 10
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda t: request(site, "GET", t)[0], targets))
    assert statuses == [200] * len(targets)


def test_keep_alive(site):
    host, port = site.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    for _ in range(3):
        conn.request("GET", "/data/tiles/0/0/0.jpg")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.version == 11
    conn.close()


# ---- refusals ---------------------------------------------------------------------------------

TRAVERSAL = [
    "/data/tiles/../../secret.json",
    "/data/tiles/../cells.h5",
    "/data/tiles/%2e%2e/%2e%2e/secret.json",
    "/data/tiles/%2E%2E%2F%2E%2E%2Fsecret.json",
    "/data/tiles/..%2f..%2fsecret.json",
    "/data/tiles/..%5c..%5csecret.json",
    "/data/tiles\\..\\..\\secret.json",
    "/static/..%2f..%2fserve.py",
    "/static/./atlas.js",
    "/data/tiles/0/./0/0.jpg",
    "/data//etc/passwd",
    "/data/tiles//etc/passwd",
    "/data/%2fetc%2fpasswd",
    "/data/tiles/%2Ftmp%2Fsecret.json",
    "/data/tiles/manifest.json%00.jpg",
    "/data/tiles/%00",
    "/data/tiles/%ff%fe.json",
    "/data/tiles/a%09b.json",
]


@pytest.mark.parametrize("target", TRAVERSAL)
def test_path_traversal_refused(site, target):
    status, headers, body = request(site, "GET", target)
    assert status == 400, (target, status, body[:200])
    assert b"Traceback" not in body and b"secret" not in body


@pytest.mark.parametrize("target,expected", [
    ("/data/tiles/evil.json", 403),  # symlink to a file outside the run folder
    ("/data/tiles/evil_dir/leak.json", 403),  # symlinked folder pointing outside
    ("/data/tiles/.state.json", 404),  # hidden files are never served
    ("/data/tiles/%252e%252e/secret.json", 404),  # double encoding stays a literal name
    ("/data/nosuchrun/manifest.json", 404),
    ("/data/tiles/0/0/9.jpg", 404),
    ("/data/tiles/../../../../../../etc/passwd", 400),
    ("//etc/passwd", 404),  # the stdlib collapses leading slashes: /etc/passwd, not ours
    ("/static/nothing.js", 404),
    ("/etc/passwd", 404),
    ("/api/nothing", 404),
])
def test_outside_or_missing_files_refused(site, target, expected):
    status, _headers, body = request(site, "GET", target)
    assert status == expected, (target, status, body[:200])
    assert b"secret" not in body and b"leak" not in body


def test_absolute_form_and_non_path_targets(site):
    for target in ("http://127.0.0.1/data/tiles/manifest.json", "*", "data/tiles/manifest.json"):
        status, _h, body = request(site, "GET", target)
        assert status == 400, target


def test_files_outside_allowed_types_refused(site):
    # the HDF5 inputs are never served: not through a symlink, not even copied into the tiles
    tiles = Path(site.root) / "tiles"
    link, copy = tiles / "cells.h5", tiles / "copy.h5"
    link.symlink_to(Path(site.root) / "cells.h5")
    shutil.copy(Path(site.root) / "cells.h5", copy)
    try:
        assert request(site, "GET", "/data/tiles/cells.h5")[0] == 403
        assert request(site, "GET", "/data/tiles/copy.h5")[0] == 404
    finally:
        link.unlink()
        copy.unlink()


def test_huge_and_malformed_queries(site):
    assert request(site, "GET", "/api/cell?level=8&id=" + "1" * 3000)[0] == 414
    assert request(site, "GET", "/data/tiles/" + "a" * 5000 + ".jpg")[0] == 414
    assert request(site, "GET", "/api/class?name=" + "x" * 500)[0] == 400
    assert request(site, "GET", "/api/runs?" + "&".join(f"k{i}=1" for i in range(40)))[0] == 400
    assert request(site, "GET", "/api/class?name=pizza%00")[0] == 400
    assert request(site, "GET", "/api/class?name=%ff")[0] == 400
    # a request line beyond the stdlib's 64 KiB limit
    host, port = site.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert s.recv(64).split(b" ")[1] == b"414"


@pytest.mark.parametrize("query,expected", [
    ("level=abc&id=1", 400),
    ("level=-1&id=1", 400),
    ("level=8.5&id=1", 400),
    ("level=99999999999999999999&id=1", 400),
    ("level=&id=1", 400),
    ("id=1", 400),
    ("level=7&id=1", 404),  # not a grid level of this atlas
    ("level=8", 400),
    ("level=8&id=abc", 400),
    ("level=8&id=-5", 400),
    ("level=8&id=64", 400),  # beyond the 8 x 8 grid
    ("level=8&id=1e3", 400),
    ("level=8&id=0x10", 400),
    ("level=8&id=%EF%BC%91", 400),  # a full-width digit
    ("level=8&id=1&run=nosuch", 404),
    ("level=8&id=1&run=../tiles", 404),
])
def test_bad_level_and_id_values(site, query, expected):
    status, data = get_json(site, "/api/cell?" + query)
    assert status == expected, (query, data)
    assert set(data) == {"error", "status"} and "Traceback" not in data["error"]


def test_empty_cell_is_404(site):
    _s, doc = get_json(site, "/data/tiles/meta/16/0-0.json")
    missing = sorted(set(range(256)) - {c["id"] for c in doc["cells"]})[0]
    status, data = get_json(site, f"/api/cell?level=16&id={missing}")
    assert status == 404 and "no cell" in data["error"]


def test_class_query_errors(site):
    assert get_json(site, "/api/class")[0] == 400
    assert get_json(site, "/api/class?name=pizza&level=zzz")[0] == 400
    assert get_json(site, "/api/class?name=pizza&level=3")[0] == 404
    assert get_json(site, "/api/classes?q=a&limit=0")[0] == 400


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FOO"])
def test_write_methods_405(site, method):
    status, headers, body = request(site, method, "/data/tiles/manifest.json", body=b"x" if method != "CONNECT" else None)
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert request(site, "GET", "/data/tiles/manifest.json")[0] == 200  # nothing changed


def test_foreign_host_header_refused(site):
    # DNS rebinding: a page on evil.example that resolves to 127.0.0.1 must not read the atlas
    assert request(site, "GET", "/api/runs", {"Host": "evil.example"})[0] == 400
    assert request(site, "GET", "/api/runs", {"Host": "localhost:1234"})[0] == 200
    assert request(site, "GET", "/api/runs", {"Host": "[::1]:8000"})[0] == 200


@pytest.mark.parametrize("host", [
    "localhost", "LocalHost:8000", "127.0.0.1", "127.0.0.1:65535", "127.1.2.3", "127.255.255.254:80", "[::1]",
    "[::1]:8000",
])
def test_loopback_host_headers_accepted(site, host):
    assert request(site, "GET", "/api/runs", {"Host": host})[0] == 200, host


@pytest.mark.parametrize("host", [
    "127.evil.com", "127.0.0.1.nip.io", "127.0.0.1.evil.com:8000", "localhost.evil.com", "evil-localhost",
    "127.1", "0x7f.0.0.1", "127.0.0.1:", "127.0.0.1:80x", "localhost:8000:1", "[::1].evil.com", "::1",
    "[::2]", "[::ffff:127.0.0.1]", "0.0.0.0", "10.0.0.1", "127.0.0.1 evil.com", "",
])
def test_lookalike_host_headers_refused(site, host):
    # DNS rebinding: a name that merely starts like a loopback address resolves wherever its owner wants
    status, _h, body = request(site, "GET", "/api/runs", {"Host": host})
    assert status == 400 and b"runs" not in body, host


def _raw(server, head: bytes) -> bytes:
    """The answer to a raw request (the status line and headers are all the tests need)."""
    with socket.create_connection(server.server_address[:2], timeout=10) as s:
        s.sendall(head)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("hosts", [
    ("localhost", "evil.example"), ("evil.example", "localhost"), ("localhost", "127.0.0.1"),
    ("127.0.0.1", "127.0.0.1"),
])
def test_several_host_headers_refused(site, hosts):
    lines = b"".join(b"Host: " + h.encode() + b"\r\n" for h in hosts)
    answer = _raw(site, b"GET /api/runs HTTP/1.1\r\n" + lines + b"Connection: close\r\n\r\n")
    assert answer.split(b" ")[1] == b"400", (hosts, answer[:200])
    assert b'"runs"' not in answer
    one = _raw(site, b"GET /api/runs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert one.split(b" ")[1] == b"200"


def test_binds_loopback_by_default(tmp_path):
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(make_server).parameters["host"].default == "127.0.0.1"
    _build(tmp_path / "run")
    server = make_server(tmp_path / "run", port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and server.loopback
        assert server.url.startswith("http://localhost:")
    finally:
        server.server_close()


def test_no_atlas_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="atlas tiles"):
        make_server(tmp_path, port=0)
    with pytest.raises(ValueError, match="not a folder"):
        make_server(tmp_path / "nope", port=0)


def test_several_runs_and_run_picker_api(tmp_path):
    _build(tmp_path / "runA")
    shutil.copytree(tmp_path / "runA", tmp_path / "runB")
    server = make_server(tmp_path, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        _s, data = get_json(server, "/api/runs")
        assert [r["id"] for r in data["runs"]] == ["runA/tiles", "runB/tiles"]
        assert [r["label"] for r in data["runs"]] == ["runA · mixed4c", "runB · mixed4c"]
        assert [r["name"] for r in data["runs"]] == ["runA", "runB"]
        assert request(server, "GET", "/data/runB/tiles/0/0/0.jpg")[0] == 200
        status, err = get_json(server, "/api/cell?level=8&id=1")
        assert status == 400 and "run=" in err["error"]
        assert get_json(server, "/api/class?run=runA/tiles&name=pizza&level=8")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_run_folders_named_with_url_characters(tmp_path):
    """A run folder's name is percent-encoded in the URLs the server gives (``base``), decoded
    once when asked for, and a path through it is checked like any other."""
    names = ["run #1 ?a=b&c", "100% <b>", "ünï"]
    for name in names:
        _build(tmp_path / name)
    (tmp_path / "secret.json").write_text('{"secret": 1}')
    server = make_server(tmp_path, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        _s, data = get_json(server, "/api/runs")
        bases = {r["name"]: r["base"] for r in data["runs"]}
        assert bases == {"run #1 ?a=b&c": "/data/run%20%231%20%3Fa%3Db%26c/tiles/",
                         "100% <b>": "/data/100%25%20%3Cb%3E/tiles/", "ünï": "/data/%C3%BCn%C3%AF/tiles/"}
        for name, base in bases.items():
            status, manifest = get_json(server, base + "manifest.json?v=1")
            assert status == 200 and manifest["kind"] == "atlas-tiles", name
            assert request(server, "GET", base + "0/0/0.jpg")[0] == 200
            status, cell = get_json(server, f"/api/cell?run={quote(name + '/tiles')}&level=4&id=0")
            if status == 200:
                assert all(t is None or t.startswith(base) for t in cell["thumbs"])
            for evil in ("%2e%2e/%2e%2e/secret.json", "..%2f..%2fsecret.json", "../../secret.json"):
                status, _h, body = request(server, "GET", base + evil)
                assert status == 400 and b"secret" not in body, (base, evil)
        assert request(server, "GET", "/data/run%20#1%20?a=b&c/tiles/manifest.json")[0] == 404  # cut at "#" and "?"
    finally:
        server.shutdown()
        server.server_close()


def test_serving_a_tiles_folder_directly(tmp_path):
    _build(tmp_path / "run")
    server = make_server(tmp_path / "run" / "tiles", port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        _s, data = get_json(server, "/api/runs")
        assert data["runs"][0]["base"] == "/data/tiles/"
        assert data["runs"][0]["name"] == "run"  # the run's, not the tiles folder's
        assert request(server, "GET", "/data/tiles/manifest.json")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_rebuilt_tiles_are_picked_up(tmp_path):
    run = write_fake_run(tmp_path / "run", sizes=(4, 8), icon_size=8, done_fraction=0.5, n_images=5)
    build_tiles(run.cells, run.icons, tmp_path / "run" / "tiles", tile_size=64, progress=False)
    server = make_server(tmp_path / "run", port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        _s, before = get_json(server, "/api/runs")
        etag = request(server, "GET", "/data/tiles/0/0/0.jpg")[1]["etag"]
        build_tiles(run.cells, run.icons, tmp_path / "run" / "tiles", tile_size=64, progress=False,
                    background="#101010", overwrite=True)
        assert request(server, "GET", "/data/tiles/0/0/0.jpg", {"If-None-Match": etag})[0] == 200
        _s, cell_before = get_json(server, "/api/class?name=pizza&level=8")
        assert _s == 200
        server._scanned = 0.0  # force the registry to rescan now
        _s, after = get_json(server, "/api/runs")
        assert after["runs"][0]["build"] != before["runs"][0]["build"]
    finally:
        server.shutdown()
        server.server_close()


def test_port_in_use_names_the_fix(site, tmp_path):
    _build(tmp_path / "run")
    with pytest.raises(OSError, match="--port 0"):
        make_server(tmp_path / "run", port=site.server_address[1])


@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_serve_port_out_of_range_names_the_option(tmp_path, atlas_cli, port):
    code, _out, err = atlas_cli("serve", str(tmp_path), "--port", port)
    assert code == 2 and "--port" in err and port in err and "Traceback" not in err


def test_serve_port_in_use_from_the_command_line_is_a_message(site, tmp_path, atlas_cli):
    _build(tmp_path / "run")
    code, _out, err = atlas_cli("serve", str(tmp_path / "run"), "--port", str(site.server_address[1]))
    assert code != 0 and "--port 0" in err and "Traceback" not in err
