"""`atlas export`: a static site that a plain static file server serves, with no atlas code running.

The site is served by ``python -m http.server`` in a subprocess and driven in headless Chromium:
class search and highlight, hover, the click panel and photo overlays all work from files.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_viewer import Page, browser  # noqa: F401 (browser is a fixture)

from atlas.cli import main
from atlas.stages.tiles import build_tiles
from atlas.web.export import export_site
from atlas.web.serve import make_server
from atlasfixture import write_fake_run

SIZES = (6, 12, 24)


def _overlay(tiles: Path) -> dict:
    """A photo overlay as `atlas explain --atlas` writes it: 16 points along the diagonal."""
    points = [{"x": (i + 0.5) / 16, "y": (i + 0.5) / 16, "pos": [i // 4, i % 4], "a": (i - 6) / 4} for i in range(16)]
    doc = {"kind": "atlas-overlay", "format": 1, "name": "p1", "photo": "p1.jpg", "class": "pizza", "class_index": 963,
           "probability": 0.5, "layer": "mixed4c", "grid": [4, 4], "layout_hash": "x", "max_abs": 2.5,
           "thumb": "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7", "points": points, "neighborhoods": []}
    (tiles / "overlays").mkdir()
    (tiles / "overlays" / "p1.json").write_text(json.dumps(doc))
    (tiles / "overlays" / "index.json").write_text(json.dumps({"kind": "atlas-overlays", "overlays": [
        {"name": "p1", "file": "overlays/p1.json", "photo": "p1.jpg", "class": "pizza", "probability": 0.5}]}))
    return doc


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    fake = write_fake_run(root / "demo", sizes=SIZES, icon_size=32, n_points=2000, n_images=20, examples=4, seed=3)
    tiles = root / "demo" / "tiles"
    build_tiles(fake.cells, fake.icons, tiles, activations_path=fake.activations, progress=False)
    _overlay(tiles)
    (root / "secret.json").write_text('{"secret": 1}')
    (tiles / "leak.json").symlink_to(root / "secret.json")  # never published
    return root / "demo"


@pytest.fixture(scope="module")
def site(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sites") / "demo-site"
    summary = export_site(run, out)
    assert summary.runs == ["demo"] and summary.files > 0 and summary.bytes > 0
    return out


def test_export_writes_every_file_the_viewer_reads(site, run):
    for rel in ("index.html", "static/atlas.js", "static/atlas.css", "static/vendor/leaflet/leaflet.js",
                "data/tiles/manifest.json", "data/tiles/0/0/0.jpg", "data/tiles/classes/index.json",
                "data/tiles/overlays/index.json", "data/tiles/overlays/p1.json"):
        assert (site / rel).is_file(), rel
    doc = json.loads((site / "atlas.json").read_text())
    assert doc["api"] is False and [(r["name"], r["base"]) for r in doc["runs"]] == [("demo", "data/tiles/")]
    manifest = json.loads((site / "data/tiles/manifest.json").read_text())
    for level in manifest["levels"]:
        for ry, rx in level["regions"]:
            assert (site / "data/tiles" / level["meta_url"].format(ry=ry, rx=rx)).is_file()
    # everything a cell points to (sprites, thumbnails) is there
    cells = json.loads((site / "data/tiles/meta/24/0-0.json").read_text())["cells"]
    for cell in cells:
        assert all((site / "data/tiles" / t).is_file() for t in cell["thumbs"] if t)
        assert cell["icon"] is None or (site / "data/tiles" / cell["icon"]["sprite"]).is_file()
    assert not (site / "data/tiles/.state.json").exists() and (run / "tiles/.state.json").exists()
    assert not (site / "data/tiles/leak.json").exists()  # a symlink out of the tiles folder


def test_exported_pages_carry_the_csp(site, run, tmp_path):
    """A static host sends no headers: each page holds the policy `atlas serve` sends, first in its head."""
    from atlas.web.serve.files import CSP, CSP_META

    assert CSP_META == CSP.replace("; frame-ancestors 'none'", "")
    tag = f'<meta http-equiv="Content-Security-Policy" content="{CSP_META}">'
    page = (site / "index.html").read_text()
    assert page.count("Content-Security-Policy") == 1 and page.index(tag) < page.index("<link") < page.index("<script")
    assert re.search(r"<head>\s*" + re.escape(tag), page)
    # any page in the tiles (a channel view) gets it as well, a page without a head before its body
    extra = run / "tiles" / "channels" / "bare" / "index.html"
    extra.parent.mkdir(parents=True)
    extra.write_text("<!doctype html><title>bare</title><script src=x.js></script>")
    try:
        export_site(run, tmp_path / "again")
    finally:
        shutil.rmtree(run / "tiles" / "channels")
    assert (tmp_path / "again/data/tiles/channels/bare/index.html").read_text() == \
        f"<!doctype html>{tag}<title>bare</title><script src=x.js></script>"


def test_class_files_equal_the_servers_api(site, run):
    server = make_server(run, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        present = json.loads((site / "data/tiles/classes/index.json").read_text())["classes"]
        assert 963 in present and len(present) >= 12
        for c in present:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/api/class?name={c}") as r:
                api = json.loads(r.read())
            exported = json.loads((site / f"data/tiles/classes/{c}.json").read_text())
            assert exported == {"class": api["class"], "levels": api["levels"]}
    finally:
        server.shutdown()
        server.server_close()


def test_export_refuses_other_folders_and_replaces_only_with_overwrite(run, site, tmp_path, capsys):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no atlas export"):
        export_site(run, other)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="--overwrite"):
        export_site(run, site)
    with pytest.raises(ValueError, match="atlas tiles"):
        export_site(tmp_path / "mine", tmp_path / "empty-site")
    assert main(["-q", "export", str(run), str(tmp_path / "again")]) == 0
    assert main(["-q", "export", str(run), str(tmp_path / "again"), "--overwrite"]) == 0
    assert "python -m http.server" in capsys.readouterr().out
    assert (tmp_path / "again" / "atlas.json").is_file() and not list(tmp_path.glob(".again.partial-*"))


@pytest.fixture(scope="module")
def static_host(site):
    """``python -m http.server`` over the site: a plain static file server, no atlas code."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(site)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"port (\d+)", line).group(1))
        yield SimpleNamespace(base_url=f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.browser
def test_viewer_works_from_the_static_site(browser, static_host, site):  # noqa: F811 (the fixture)
    p = Page(browser, static_host)
    try:
        p.open("#z=2&x=0.5&y=0.5")
        assert p.js("atlasViewer.state.api") is False
        assert p.page.inner_text("#subtitle").startswith("demo")
        level = int(p.js("document.body.dataset.level"))
        cells = {c["id"]: c for c in json.loads((site / f"data/tiles/meta/{level}/0-0.json").read_text())["cells"]}

        # class search and highlight, from classes/963.json
        p.page.click("#search-input")
        p.page.keyboard.type("pizz")
        p.page.wait_for_selector("#search-list li[role=option]", timeout=5_000)
        p.page.keyboard.press("Enter")
        p.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
        expected = json.loads((site / "data/tiles/classes/963.json").read_text())["levels"]
        level = int(p.js("document.body.dataset.level"))
        assert int(p.js("document.body.dataset.highlightCount")) == len(expected[str(level)]["cells"]) > 0

        # hover: the tooltip of the most populated cell, from meta/
        p.page.click("#class-clear")
        cells = {c["id"]: c for c in json.loads((site / f"data/tiles/meta/{level}/0-0.json").read_text())["cells"]}
        cell = max((c for c in cells.values() if c["done"] and c["thumbs"]), key=lambda c: c["count"])
        x, y = p.point_of(level, cell)
        p.page.mouse.move(x - 30, y - 30)
        p.page.mouse.move(x, y, steps=4)
        p.page.wait_for_selector("#tooltip:not([hidden])", timeout=5_000)
        assert f"{cell['count']:,} activations" in p.page.inner_text("#tooltip")

        # click: the panel with its dataset examples, from thumbs/
        p.page.mouse.click(x, y)
        p.page.wait_for_selector("#panel:not([hidden])", timeout=5_000)
        n = len([t for t in cell["thumbs"] if t])
        p.page.wait_for_function(
            f"() => [...document.querySelectorAll('#panel .thumbs img')].filter(i => i.complete && i.naturalWidth > 0).length === {n}",
            timeout=10_000)
        p.page.keyboard.press("Escape")

        # a photo overlay, from overlays/
        p.page.wait_for_selector("#photos:not([hidden])", timeout=5_000)
        p.page.check("#photos input[data-name='p1']")
        p.page.wait_for_function("() => document.body.dataset.overlayPoints === '16'", timeout=5_000)
        assert not [u for u in p.requests if "/api/" in u]  # files only
    finally:
        p.close()
