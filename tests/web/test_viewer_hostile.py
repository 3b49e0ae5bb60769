"""Hostile names in the viewer: every name from the data is shown as text, never run as HTML.

A tiny real run is placed in a run folder whose name holds ``#``, ``?`` and an ``<img onerror>``
payload, beside a plainly named copy; both atlases' class names carry a payload, a photo whose
file name carries one is explained onto them (``atlas explain --atlas``), and a channel view of a
photo so named is published into the plain one. The atlases are served by ``atlas serve`` and
exported by ``atlas export`` (then hosted by ``python -m http.server``, which sends no security
headers), and driven in headless Chromium: hover, the click panel, class search and highlight,
the photo list, an overlay turned on by a link, its point tooltips and the run picker. No
element may be created from a name (no ``img[src="x"]``), the payload's flag stays unset, the
names read literally, and the run named with URL characters loads its tiles.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_viewer import Page, browser  # noqa: F401 (browser is a fixture)

from atlas.web.serve import make_server

pytestmark = pytest.mark.browser

PAYLOAD = '<img src=x onerror="window.atlasPwned=1">'
HOSTILE_RUN = f"run #1 ?a=b&{PAYLOAD}"  # a run folder's name
HOSTILE_ID = f"{HOSTILE_RUN}/tiles"
PLAIN_ID = "plain/tiles"
PHOTO = f"n01440764_{PAYLOAD}.JPEG"  # the explained photo's file name
CHANNEL_PHOTO = f"ch {PAYLOAD}.jpg"  # the photo of a channel view
LAYER = "inception4c"


def hostile(name: str) -> str:
    """A class name of the hostile atlases."""
    return f"{PAYLOAD} {name} & <b>co</b>"


def _rename_classes(tiles: Path) -> None:
    """Give every class of a tiles folder its hostile name (manifest and per-cell metadata)."""
    manifest = json.loads((tiles / "manifest.json").read_text())
    manifest["classes"] = [hostile(n) for n in manifest["classes"]]
    (tiles / "manifest.json").write_text(json.dumps(manifest))
    for meta in (tiles / "meta").rglob("*.json"):
        doc = json.loads(meta.read_text())
        doc["names"] = {k: hostile(v) for k, v in doc["names"].items()}
        meta.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def hostile_root(tiny_run, tmp_path_factory):
    """A folder of two atlases: ``HOSTILE_RUN/tiles`` and ``plain/tiles``, hostile names inside."""
    import torch

    from atlas.models import load_model
    from atlas.tools.channels import channel_view, publish_channel_view
    from atlas.tools.explain import explain_photo, place_on_atlas, write_overlay
    from tinynet import Tiny

    root = tmp_path_factory.mktemp("hostile")
    run = root / HOSTILE_RUN
    shutil.copytree(tiny_run, run)
    for sub in ("overlays", "channels"):  # what other tests placed on the shared tiny run
        shutil.rmtree(run / "tiles" / sub, ignore_errors=True)
    _rename_classes(run / "tiles")

    photo = root / "photos" / PHOTO
    photo.parent.mkdir()
    shutil.copy(tiny_run.parent / "photos" / "p7.jpg", photo)
    e = explain_photo(load_model("inceptionv1", random_init=True), photo, methods=("saliency",))
    overlay = write_overlay(e, place_on_atlas(e, run))
    doc = json.loads(overlay.read_text())
    assert doc["photo"] == PHOTO
    doc["class"] = hostile(doc["class"])  # the explained class, by the atlas's (hostile) name
    overlay.write_text(json.dumps(doc))
    index_path = run / "tiles" / "overlays" / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["overlays"]:
        entry["class"] = doc["class"]
    index_path.write_text(json.dumps(index))

    shutil.copytree(run, root / "plain")
    photo_tensor = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    view = channel_view(load_model(Tiny(), input_size=16), photo_tensor, "relu2", top=2, cache_dir=root / "cache",
                        icon_size=16, steps=3, batch_size=2, device="cpu")
    publish_channel_view(view, root / "plain", CHANNEL_PHOTO, title=f"{CHANNEL_PHOTO}: relu2")
    shutil.rmtree(root / "cache")
    return SimpleNamespace(root=root, overlay=doc, tiles=run / "tiles")


@pytest.fixture(scope="module")
def served(hostile_root):
    server = make_server(hostile_root.root, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield SimpleNamespace(base_url=f"http://127.0.0.1:{server.server_address[1]}/", server=server)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def exported(hostile_root, tmp_path_factory):
    """The export, hosted by ``python -m http.server`` (no security headers of its own)."""
    from atlas.web.export import export_site

    out = tmp_path_factory.mktemp("hostile-site") / "site"
    export_site(hostile_root.root, out)
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
        yield SimpleNamespace(base_url=f"http://127.0.0.1:{port}/", out=out)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["serve", "export"])
def host(request):
    return request.getfixturevalue("served" if request.param == "serve" else "exported")


def link(**params) -> str:
    return "#" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


class Watched(Page):
    """A page that also records every failed response."""

    def __init__(self, browser, site):  # noqa: F811 (the fixture's name)
        super().__init__(browser, site)
        self.failed: list[str] = []
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.status} {r.url}"))
        # a request the page cancelled itself (net::ERR_ABORTED: Leaflet drops the tile loads a
        # zoom or pan left behind) is not a failure to load; a wrong URL answers 404 above
        self.page.on("requestfailed", lambda r: r.failure != "net::ERR_ABORTED"
                     and self.failed.append(f"failed ({r.failure}) {r.url}"))

    def assert_clean(self) -> None:
        """No element made from a name, the payload never ran, nothing failed to load."""
        assert self.js("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert self.js("[...document.querySelectorAll('b')].filter((b) => b.textContent === 'co').length") == 0
        assert self.js("window.atlasPwned") is None
        assert self.failed == []
        assert self.page.is_hidden("#message"), self.page.inner_text("#message")

    def close(self) -> None:
        try:
            self.assert_clean()
        finally:
            super().close()


def _cells(tiles: Path, size: int) -> list[dict]:
    return json.loads((tiles / "meta" / str(size) / "0-0.json").read_text())["cells"]


def _hover_overlay(p: Page) -> str:
    """Hover the strongest point of the shown overlay (drawn on top); its tooltip's text."""
    x, y = p.js("""() => { const [g] = atlasViewer.state.shown.values();
                           const m = g.getLayers().reduce((a, b) => (b.options.radius > a.options.radius ? b : a));
                           const q = atlasViewer.map.latLngToContainerPoint(m.getLatLng()); return [q.x, q.y]; }""")
    p.page.mouse.move(x - 30, y - 30)
    p.page.mouse.move(x, y, steps=4)
    tip = p.page.wait_for_selector(".leaflet-tooltip", timeout=5_000)
    return tip.inner_text()


def test_names_are_shown_as_text(browser, host, hostile_root):  # noqa: F811 (the fixture)
    overlay = hostile_root.overlay
    name = overlay["name"]
    p = Watched(browser, host)
    try:
        p.open(link(run=PLAIN_ID, z=2, x=0.5, y=0.5))
        assert p.js("atlasViewer.state.run.id") == PLAIN_ID
        # the run picker lists the hostile run by its name
        options = p.js("[...document.querySelectorAll('#run-select option')].map((o) => [o.value, o.textContent])")
        assert [HOSTILE_ID, f"{HOSTILE_RUN} · {LAYER}"] in options
        p.assert_clean()

        # hover: the tooltip's title and classes
        level = int(p.js("document.body.dataset.level"))
        cell = max((c for c in _cells(hostile_root.tiles, level) if c["done"]), key=lambda c: c["count"])
        names = json.loads((hostile_root.tiles / "meta" / str(level) / "0-0.json").read_text())["names"]
        top = names[str(next(c for c, v in cell["top"] if v > 0))]
        x, y = p.point_of(level, cell)
        p.page.mouse.move(x - 30, y - 30)
        p.page.mouse.move(x, y, steps=4)
        p.page.wait_for_selector("#tooltip:not([hidden])", timeout=5_000)
        assert p.page.inner_text("#tooltip .tt-title") == top
        assert top in p.page.inner_text("#tooltip .classes")
        p.assert_clean()

        # click: the panel's heading and classes; a class picked there is highlighted
        p.page.mouse.click(x, y)
        p.page.wait_for_selector("#panel:not([hidden])", timeout=5_000)
        assert p.page.inner_text("#panel h2") == top
        p.page.click("#panel .classes li >> nth=0")
        p.page.wait_for_selector("body[data-highlight-count]", timeout=5_000)
        assert p.page.inner_text("#class-name") == top
        p.page.wait_for_function("() => new URLSearchParams(location.hash.slice(1)).get('class') !== null")
        assert p.js("new URLSearchParams(location.hash.slice(1)).get('class')") == top
        p.page.keyboard.press("Escape")
        p.assert_clean()

        # class search: the options read literally
        p.page.click("#search-input")
        p.page.keyboard.type("<img src=x")
        option = p.page.wait_for_selector("#search-list li[role=option]", timeout=5_000)
        assert option.inner_text().startswith(PAYLOAD)
        p.page.keyboard.press("Escape")
        p.assert_clean()

        # the photo list, an overlay's legend and its points' tooltips
        p.page.wait_for_selector("#photos:not([hidden])", timeout=5_000)
        assert p.page.get_attribute(f"#photos-list input[data-name='{name}'] >> xpath=..", "title") == \
            f"{PHOTO}: explaining “{overlay['class']}”"
        assert overlay["class"] in p.page.inner_text("#photos-list")
        p.page.check(f"#photos input[data-name='{name}']")
        p.page.wait_for_function("() => +document.body.dataset.overlayPoints > 0", timeout=5_000)
        assert p.page.get_attribute("#photos-legend img", "alt") == PHOTO
        assert p.page.inner_text("#photos-legend figcaption b") == overlay["class"]
        tip = _hover_overlay(p)
        assert tip.startswith(f"{PHOTO} · position") and f"attribution to “{overlay['class']}”" in tip
        p.assert_clean()

        # the channel view list, and the view's page
        views = p.page.locator("#channel-views-list a")
        assert views.count() == 1 and views.inner_text() == CHANNEL_PHOTO
        with p.page.context.expect_page() as opened:
            views.click()
        page = opened.value
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.wait_for_function("() => document.querySelectorAll('.card img.map').length === 4", timeout=10_000)
        assert page.title() == f"{CHANNEL_PHOTO}: relu2" and page.inner_text("h1") == f"{CHANNEL_PHOTO}: relu2"
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert page.evaluate("window.atlasPwned") is None and not errors
        page.close()

        # a link with the photo turns the overlay on by itself, in a fresh page
        hash_ = p.js("location.hash")
        assert f"photo={name}" in hash_
        p.page.goto("about:blank")
        p.open(hash_)
        p.page.wait_for_function("() => +document.body.dataset.overlayPoints > 0", timeout=10_000)
        assert p.page.inner_text("#class-name") == top
        assert _hover_overlay(p).startswith(f"{PHOTO} · position")
        p.assert_clean()
    finally:
        p.close()


def test_run_named_with_url_characters_loads(browser, host, hostile_root):  # noqa: F811 (the fixture)
    encoded = urllib.parse.quote(HOSTILE_ID)
    p = Watched(browser, host)
    try:
        # picked from the list
        p.open(link(run=PLAIN_ID))
        p.page.select_option("#run-select", HOSTILE_ID)
        p.page.wait_for_function(f"() => atlasViewer.state.run.id === {json.dumps(HOSTILE_ID)}", timeout=5_000)
        p.page.wait_for_function(
            "(base) => [...document.querySelectorAll('img.leaflet-tile-loaded')].some((i) => i.src.includes(base))",
            arg=f"/data/{encoded}/", timeout=10_000)
        assert p.page.inner_text("#subtitle") == f"{HOSTILE_RUN} · inceptionv1 · {LAYER}"
        p.assert_clean()

        # opened by a link, with its photo overlay on
        name = hostile_root.overlay["name"]
        p.page.goto("about:blank")
        p.open(link(run=HOSTILE_ID, z=1, x=0.5, y=0.5, photo=name))
        assert p.js("atlasViewer.state.run.id") == HOSTILE_ID
        tiles = p.js("[...document.querySelectorAll('img.leaflet-tile-loaded')].filter((i) => i.naturalWidth === 128)"
                     ".map((i) => i.src)")
        assert tiles and all(f"/data/{encoded}/1/" in t for t in tiles)
        p.page.wait_for_function("() => +document.body.dataset.overlayPoints > 0", timeout=10_000)
        assert _hover_overlay(p).startswith(f"{PHOTO} · position")
        # the link the viewer writes names the run again
        p.page.wait_for_function("() => location.hash.includes('photo=')", timeout=5_000)
        assert p.js("new URLSearchParams(location.hash.slice(1)).get('run')") == HOSTILE_ID
        p.assert_clean()
    finally:
        p.close()


class _Metas(HTMLParser):
    def __init__(self):
        super().__init__()
        self.csp: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy":
            self.csp.append(a.get("content") or "")


def _directives(policy: str) -> dict[str, str]:
    return {d.split()[0]: d.strip() for d in policy.split(";") if d.strip()}


def test_exported_pages_carry_the_servers_csp(exported, served):
    with urllib.request.urlopen(served.base_url, timeout=10) as r:
        header = _directives(r.headers["Content-Security-Policy"])
    header.pop("frame-ancestors")  # not honoured in a <meta> tag: a host's header must say it
    pages = sorted(exported.out.rglob("*.html"))
    assert {p.relative_to(exported.out).as_posix() for p in pages} >= {
        "index.html", "data/plain/tiles/channels/ch-img-src-x-onerror-window.atlasPwned-1/index.html"}
    for page in pages:
        parser = _Metas()
        parser.feed(page.read_text(encoding="utf-8"))
        assert len(parser.csp) == 1, page
        assert _directives(parser.csp[0]) == header, page
