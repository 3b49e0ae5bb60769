"""The viewer in a real browser: headless Chromium driven by Playwright against `atlas serve`.

Needs ``pip install playwright`` and Debian's Chromium (``apt-get install -y chromium``; never
``playwright install``, which downloads a browser). Skipped with the reason when either is
missing, unless ``ATLAS_REQUIRE_BROWSER`` is set (CI), then failed. ``ATLAS_CHROMIUM`` overrides
the browser path; screenshots go to a temporary folder and also to ``$ATLAS_SCREENSHOTS_DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest

from atlas.stages.tiles import build_tiles
from atlas.web.serve import make_server
from atlasfixture import write_fake_run
from browserkit import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _require_browser

pytestmark = pytest.mark.browser

RUN = "alpha/tiles"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("atlases")
    alpha = write_fake_run(root / "alpha", sizes=(6, 12, 24, 48), icon_size=32, n_points=2500, n_images=24,
                           examples=4, done_fraction=0.92, seed=1)
    build_tiles(alpha.cells, alpha.icons, root / "alpha" / "tiles", activations_path=alpha.activations,
                progress=False)
    beta = write_fake_run(root / "beta", sizes=(4, 8), icon_size=16, n_points=500, n_images=6, seed=2)
    build_tiles(beta.cells, beta.icons, root / "beta" / "tiles", progress=False)
    server = make_server(root, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _require_browser()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("ATLAS_SCREENSHOTS_DIR"):
        folders.append(Path(os.environ["ATLAS_SCREENSHOTS_DIR"]))
        folders[-1].mkdir(parents=True, exist_ok=True)

    def save(page, name: str) -> None:
        page.screenshot(path=str(folders[0] / name))
        for extra in folders[1:]:
            shutil.copy(folders[0] / name, extra / name)

    return save


class Page:
    """A page with its network log; every request must stay on the local server."""

    def __init__(self, browser, site):
        self.site = site
        self.page = browser.new_page(viewport=VIEWPORT)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

    def open(self, hash_: str = "") -> None:
        self.page.goto(self.site.base_url + hash_)
        self.page.wait_for_selector("body[data-ready='1']", timeout=20_000)

    def js(self, expr: str, arg=None):
        return self.page.evaluate(expr, arg)

    def tiles_at(self, z: int, run: str = RUN) -> list[str]:
        prefix = f"{self.site.base_url}data/{run}/{z}/"
        return [u for u in self.requests if u.startswith(prefix)]

    def point_of(self, size: int, cell: dict) -> tuple[float, float]:
        """Viewport coordinates of the centre of ``cell`` of grid ``size``."""
        return tuple(self.js(
            """([u, v]) => { const p = atlasViewer.map.latLngToContainerPoint(atlasViewer.toLatLng(u, v));
                              return [p.x, p.y]; }""",
            [(cell["ix"] + 0.5) / size, (cell["iy"] + 0.5) / size],
        ))

    def close(self) -> None:
        local = [u for u in self.requests if not u.startswith(self.site.base_url) and not u.startswith("data:")]
        self.page.close()
        assert local == [], f"requests left the local server: {local}"
        assert self.errors == [], f"errors in the page: {self.errors}"


def _get(site, path: str):
    with urllib.request.urlopen(site.base_url + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def _cells(site, size: int) -> list[dict]:
    return _get(site, f"data/{RUN}/meta/{size}/0-0.json")["cells"]


def _pick(site, size: int, class_index: int | None = None) -> dict:
    """A rendered, well-populated cell of grid ``size`` (strongest for ``class_index`` if given)."""
    cells = [c for c in _cells(site, size) if c["done"] and c["thumbs"]]
    if class_index is None:
        return max(cells, key=lambda c: c["count"])
    return max(cells, key=lambda c: dict(c["top"]).get(class_index, 0))


@pytest.fixture
def vpage(browser, site):
    """A fresh page (named so as not to clash with pytest-playwright's ``page``)."""
    p = Page(browser, site)
    yield p
    p.close()


def test_zoom_in_loads_finer_tiles(vpage, site, shots):
    manifest = _get(site, f"data/{RUN}/manifest.json")
    vpage.open()
    assert vpage.js("document.querySelectorAll('#run-select option').length") == 2  # the run picker
    assert vpage.page.is_visible("#run-picker")
    z0 = vpage.js("Math.round(atlasViewer.map.getZoom())")
    coarse = int(vpage.js("document.body.dataset.level"))
    assert coarse == manifest["zooms"][z0]["level"] and vpage.tiles_at(z0)
    shots(vpage.page, "overview.png")

    deepest = manifest["max_native_zoom"]
    for _ in range(12):  # the zoom control's + button, 0.5 zoom a click
        if vpage.js("atlasViewer.map.getZoom()") >= deepest:
            break
        vpage.page.click(".leaflet-control-zoom-in")
        vpage.page.wait_for_timeout(300)
    vpage.page.wait_for_function(
        f"() => [...document.querySelectorAll('img.leaflet-tile-loaded')].some(i => i.src.includes('/{RUN}/{deepest}/'))",
        timeout=15_000,
    )
    assert int(vpage.js("document.body.dataset.level")) == 48 > coarse
    assert vpage.tiles_at(deepest), "no tiles of the deepest zoom were requested"
    assert vpage.js(f"[...document.querySelectorAll('img.leaflet-tile-loaded')].filter(i => i.src.includes('/{RUN}/{deepest}/') && i.naturalWidth === 256).length") > 0
    assert "grid 48×48" in vpage.page.inner_text("#status-level")


def test_hover_shows_cell_tooltip(vpage, site, shots):
    cell = _pick(site, 24)
    names = _get(site, f"data/{RUN}/meta/24/0-0.json")["names"]
    vpage.open(f"#run={RUN}&z=2&x={(cell['ix'] + 0.5) / 24:.4f}&y={(cell['iy'] + 0.5) / 24:.4f}")
    assert vpage.js("document.body.dataset.level") == "24"
    x, y = vpage.point_of(24, cell)
    vpage.page.mouse.move(x - 40, y - 40)
    vpage.page.mouse.move(x, y, steps=4)
    vpage.page.wait_for_selector("#tooltip:not([hidden])", timeout=5_000)
    text = vpage.page.inner_text("#tooltip")
    assert vpage.js("document.getElementById('tooltip').dataset.cell") == f"24:{cell['id']}"
    assert f"{cell['count']:,} activations" in text
    assert f"cell {cell['iy']}, {cell['ix']}" in text
    top = [c for c, v in cell["top"] if v > 0]
    assert names[str(top[0])] in text
    assert vpage.page.locator(".cell-hover").count() == 1
    shots(vpage.page, "hover.png")
    vpage.page.mouse.move(5, 790)  # off the atlas: the tooltip goes away
    vpage.page.wait_for_selector("#tooltip", state="hidden", timeout=5_000)


def test_class_search_highlights_by_attribution(vpage, site, shots):
    vpage.open(f"#run={RUN}&z=2&x=0.5&y=0.5")
    vpage.page.click("#search-input")
    vpage.page.keyboard.type("pizz")
    option = vpage.page.wait_for_selector("#search-list li[role=option]", timeout=5_000)
    assert option.inner_text().startswith("pizza")
    vpage.page.keyboard.press("Enter")
    vpage.page.wait_for_selector("body[data-highlight-count]", timeout=5_000)
    expected = {c["id"]: dict(c["top"])[963] for c in _cells(site, 24) if dict(c["top"]).get(963, 0) > 0}
    assert int(vpage.js("document.body.dataset.highlightCount")) == len(expected) > 0
    assert "pizza" in vpage.page.inner_text("#class-chip")
    vpage.page.wait_for_function("() => location.hash.includes('class=pizza')", timeout=5_000)

    def veil_alpha(cell: dict) -> int:  # opacity of the veil over a cell's centre, 0..255
        x, y = vpage.point_of(24, cell)
        return vpage.js(
            """([x, y]) => { const c = document.querySelector('canvas.atlas-highlight');
                              const r = c.getBoundingClientRect(); const k = c.width / r.width;
                              return c.getContext('2d').getImageData(Math.round((x - r.left) * k), Math.round((y - r.top) * k), 1, 1).data[3]; }""",
            [x, y],
        )

    best = max(expected, key=expected.get)
    weak = min(expected, key=expected.get)
    other = next(c for c in _cells(site, 24) if c["id"] not in expected)
    by_id = {c["id"]: c for c in _cells(site, 24)}
    assert veil_alpha(by_id[best]) <= 3  # opacity = attribution / max = 1: no veil
    assert veil_alpha(other) == pytest.approx(0.84 * 255, abs=3)  # no attribution: veiled
    strength = expected[weak] / expected[best]
    assert veil_alpha(by_id[weak]) == pytest.approx(0.84 * 255 * (1 - strength), abs=4)
    shots(vpage.page, "class-highlight.png")

    vpage.page.click("#class-clear")
    assert vpage.page.is_hidden("#class-chip")
    assert vpage.js("document.querySelector('canvas.atlas-highlight')") is None


def test_class_search_brings_off_screen_cells_into_view(vpage, site):
    by_id = {c["id"]: c for c in _cells(site, 48)}
    pizza = {i: dict(c["top"]).get(963, 0) for i, c in by_id.items() if dict(c["top"]).get(963, 0) > 0}
    best = by_id[max(pizza, key=pizza.get)]
    u, v = (best["ix"] + 0.5) / 48, (best["iy"] + 0.5) / 48
    far = (0.05 if u > 0.5 else 0.95, 0.05 if v > 0.5 else 0.95)  # the opposite corner, zoomed in
    vpage.open(f"#run={RUN}&z=4&x={far[0]}&y={far[1]}")

    def in_view(cell: dict, size: int) -> bool:
        x, y = vpage.point_of(size, cell)
        return 0 <= x < VIEWPORT["width"] and 0 <= y < VIEWPORT["height"]

    assert not in_view(best, 48)
    vpage.page.click("#search-input")
    vpage.page.keyboard.type("pizz")
    vpage.page.wait_for_selector("#search-list li[role=option]", timeout=5_000)
    vpage.page.keyboard.press("Enter")
    vpage.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
    vpage.page.wait_for_timeout(1200)  # the flight takes 0.6 s
    assert in_view(best, 48)
    assert vpage.js("atlasViewer.map.getZoom()") <= 4  # brought into view by moving (and zooming out), never in
    vpage.page.wait_for_function("() => location.hash.includes('class=pizza')", timeout=5_000)


def test_serving_a_run_folder_shows_the_runs_name(browser, site):
    for served in (site.root / "alpha", site.root / "alpha" / "tiles"):
        server = make_server(served, port=0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
        p = Page(browser, server)
        try:
            runs = _get(server, "atlas.json")["runs"]
            assert [(r["name"], r["label"]) for r in runs] == [("alpha", "alpha · mixed4c")]
            p.open()
            assert p.page.inner_text("#subtitle") == "alpha · fake-net · mixed4c"
            assert p.page.is_hidden("#run-picker")
        finally:
            p.close()
            server.shutdown()
            server.server_close()


def test_click_opens_panel_with_examples(vpage, site, shots):
    cell = _pick(site, 24)
    vpage.open(f"#run={RUN}&z=2&x={(cell['ix'] + 0.5) / 24:.4f}&y={(cell['iy'] + 0.5) / 24:.4f}")
    x, y = vpage.point_of(24, cell)
    vpage.page.mouse.click(x, y)
    vpage.page.wait_for_selector("#panel:not([hidden])", timeout=5_000)
    assert vpage.js("document.getElementById('panel').dataset.cell") == f"24:{cell['id']}"
    n = len([t for t in cell["thumbs"] if t])
    vpage.page.wait_for_function(
        f"() => [...document.querySelectorAll('#panel .thumbs img')].filter(i => i.complete && i.naturalWidth === 64).length === {n}",
        timeout=10_000,
    )
    # the icon: its box of a sprite sheet, scaled from 32 to 168 px
    assert vpage.js("document.querySelector('#panel .panel-icon').dataset.sprite") == cell["icon"]["sprite"]
    vpage.page.wait_for_function("() => document.querySelector('#panel .panel-icon').style.backgroundImage.includes('icons/24/')")
    assert any(f"/{RUN}/{cell['icon']['sprite']}" in u for u in vpage.requests)
    assert f"{cell['count']:,}" in vpage.page.inner_text("#panel")
    vpage.page.wait_for_function(f"() => location.hash.includes('cell=24:{cell['id']}')", timeout=5_000)
    shots(vpage.page, "panel.png")
    # a class in the panel highlights it; Escape closes the panel
    vpage.page.click("#panel .classes li >> nth=0")
    vpage.page.wait_for_selector("body[data-highlight-count]", timeout=5_000)
    vpage.page.keyboard.press("Escape")
    assert vpage.page.is_hidden("#panel")


def test_deep_link_restores_view(vpage, site, shots):
    cell = _pick(site, 48, class_index=309)  # bee
    vpage.open(f"#run={RUN}&z=3&x=0.3125&y=0.5833&class=bee&cell=48:{cell['id']}")
    assert vpage.js("atlasViewer.map.getZoom()") == 3
    center = vpage.js("(() => { const c = atlasViewer.map.getCenter(); const m = atlasViewer.state.m;"
                     " return [(c.lng - m.margin_px) / m.content_px, (c.lat - m.margin_px) / m.content_px]; })()")
    assert center == [pytest.approx(0.3125, abs=1e-3), pytest.approx(0.5833, abs=1e-3)]
    vpage.page.wait_for_selector("#panel:not([hidden])", timeout=5_000)
    assert vpage.js("document.getElementById('panel').dataset.cell") == f"48:{cell['id']}"
    vpage.page.wait_for_selector("body[data-highlight-class='bee']", timeout=5_000)
    assert vpage.js("document.body.dataset.level") == "48"
    shots(vpage.page, "deep-link.png")
    # editing the hash moves the view
    vpage.js("location.hash = '#run=alpha/tiles&z=1&x=0.5&y=0.5'")
    vpage.page.wait_for_function("() => atlasViewer.map.getZoom() === 1", timeout=5_000)
    assert vpage.page.is_hidden("#panel") and vpage.page.is_hidden("#class-chip")


def test_keyboard_pan_and_zoom(vpage):
    vpage.open(f"#run={RUN}&z=3&x=0.5&y=0.5")  # zoomed in enough that the atlas overflows the window
    vpage.page.focus("#map")
    before = vpage.js("atlasViewer.map.getCenter().lng")
    vpage.page.keyboard.press("ArrowRight")
    vpage.page.wait_for_timeout(400)
    assert vpage.js("atlasViewer.map.getCenter().lng") > before
    vpage.page.keyboard.press("Equal")  # '=' / '+' zooms in
    vpage.page.wait_for_timeout(400)
    assert vpage.js("atlasViewer.map.getZoom()") == 3.5
    vpage.page.keyboard.press("/")
    assert vpage.js("document.activeElement.id") == "search-input"


def test_run_picker_switches_atlas(vpage):
    vpage.open()
    vpage.page.select_option("#run-select", "beta/tiles")
    vpage.page.wait_for_function("() => atlasViewer.state.run.id === 'beta/tiles'", timeout=5_000)
    vpage.page.wait_for_selector("img.leaflet-tile-loaded[src*='/data/beta/tiles/']", timeout=10_000)
    assert vpage.js("document.body.dataset.level") in ("4", "8")


@pytest.fixture(scope="module")
def explained_site(tiny_run):
    """`atlas serve` over a real (tiny) run with one photo placed by `atlas explain --atlas`."""
    from atlas.models import load_model
    from atlas.tools.explain import explain_photo, place_on_atlas, write_overlay

    model = load_model("inceptionv1", random_init=True)
    e = explain_photo(model, tiny_run.parent / "photos" / "p7.jpg", methods=("saliency",))
    overlay = write_overlay(e, place_on_atlas(e, tiny_run), name="p7")
    server = make_server(tiny_run, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    server.overlay = json.loads(overlay.read_text())
    yield server
    server.shutdown()
    server.server_close()


def test_photo_overlay_toggles_points_on_the_atlas(browser, explained_site, vpage, shots):
    vpage.open()
    assert vpage.page.is_hidden("#photos")  # no photo placed on the fake atlases
    doc = explained_site.overlay
    # (the run is shared with the explain tests, which may have added overlays of their own)
    assert "p7" in [o["name"] for o in _get(explained_site, "api/overlays")["overlays"]]
    p = Page(browser, explained_site)
    try:
        p.open()
        p.page.wait_for_selector("#photos:not([hidden])", timeout=5_000)
        assert p.js("document.querySelectorAll('.overlay-point').length") == 0
        p.page.check("#photos input[data-name='p7']")
        p.page.wait_for_function("() => document.body.dataset.overlayPoints === '196'", timeout=5_000)
        assert p.js("document.querySelectorAll('path.overlay-point').length") == 196
        assert p.page.is_visible("#photos-legend .photo-card img")
        assert doc["class"] in p.page.inner_text("#photos-legend")
        # each point sits where the overlay file puts it: strongest point's marker vs toLatLng
        strongest = max(doc["points"], key=lambda q: abs(q["a"]))
        got = p.js("""(pt) => { const g = atlasViewer.state.shown.get('p7');
                       const m = g.getLayers().find((l) => l.getTooltip().getContent().textContent.includes(
                           `position (${pt.pos[0]}, ${pt.pos[1]})`));
                       const a = m.getLatLng(), b = atlasViewer.toLatLng(pt.x, pt.y);
                       return [a.lat - b.lat, a.lng - b.lng, m.getRadius()]; }""", strongest)
        assert got[0] == pytest.approx(0, abs=1e-6) and got[1] == pytest.approx(0, abs=1e-6) and got[2] == pytest.approx(10)
        shots(p.page, "photo-overlay.png")
        p.page.wait_for_function("() => location.hash.includes('photo=p7')", timeout=5_000)
        link = p.js("location.hash")
        p.page.uncheck("#photos input[data-name='p7']")
        p.page.wait_for_function("() => document.querySelectorAll('.overlay-point').length === 0", timeout=5_000)
        p.page.goto("about:blank")  # the link brings the overlay back in a fresh page
        p.open(link)
        p.page.wait_for_function("() => document.body.dataset.overlayPoints === '196'", timeout=10_000)
        assert p.js("document.querySelector(\"#photos input[data-name='p7']\").checked")
    finally:
        p.close()


def test_channel_view_is_listed_and_opens_from_the_viewer(browser, tiny_run, tmp_path):
    """`atlas channels PHOTO --run RUN` puts a page into the run's tiles; the viewer served by
    `atlas serve` lists it, and the page works under the server's content security policy."""
    import shutil

    import torch

    from atlas.models import load_model
    from atlas.tools.channels import channel_view, publish_channel_view
    from tinynet import Tiny

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "tiles", run / "tiles")  # the shared tiny run stays as it is
    shutil.rmtree(run / "tiles" / "overlays", ignore_errors=True)  # photos placed by other tests
    model = load_model(Tiny(), input_size=16)
    photo = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    view = channel_view(model, photo, "relu2", top=2, cache_dir=tmp_path / "cache", icon_size=16, steps=3,
                        batch_size=2, device="cpu")
    page_path = publish_channel_view(view, run, "shots/my photo.jpg", title="tiny channels")
    assert page_path == run / "tiles" / "channels" / "my-photo" / "index.html"
    publish_channel_view(view, run, "shots/my photo.jpg", title="tiny channels")  # the same photo: replaced
    index = json.loads((run / "tiles" / "channels" / "index.json").read_text())
    assert [v["name"] for v in index["views"]] == ["my-photo"]
    with pytest.raises(ValueError, match="no tiles/manifest.json"):
        publish_channel_view(view, tmp_path / "nowhere", "p.jpg")

    server = make_server(run, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    p = Page(browser, server)
    try:
        p.open()
        p.page.wait_for_selector("#channel-views:not([hidden])", timeout=5_000)
        assert p.page.is_visible("#photos") and p.page.is_hidden("#photos-part")  # no photo overlays here
        link = p.page.locator("#channel-views-list a")
        assert link.count() == 1 and link.inner_text() == "my photo.jpg"
        with p.page.context.expect_page() as opened:
            link.click()
        page = opened.value
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.wait_for_function("() => document.querySelectorAll('.card img.map').length === 4 && "
                               "[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=10_000)
        shown = page.eval_on_selector_all(".card", "els => els.map(e => +e.dataset.channel)")
        assert shown == view.order.tolist() and page.locator(".card img.icon").count() == 2
        assert page.url.startswith(server.base_url + "data/") and page.title() == "tiny channels"
        assert not errors and not p.errors
        page.close()
    finally:
        p.close()
        server.shutdown()
        server.server_close()


def test_unrendered_levels_show_their_ancestors_icons_and_say_so(browser, tmp_path, shots):
    """A run whose two finer grids were never rendered (a render stopped early, or fewer levels
    chosen): zoomed in, the map shows the 12x12 grid's icons over their areas, scaled, not grey
    squares, and the status line, the tooltip and the panel say so."""
    import io

    import h5py
    import numpy as np
    from PIL import Image

    from atlasfixture import fake_icons

    run = write_fake_run(tmp_path / "gamma", sizes=(6, 12, 24, 48), icon_size=32, n_points=2500, n_images=24,
                         examples=4, done_fraction=1.0, seed=1)
    with h5py.File(run.icons, "r+") as f:
        for size in (24, 48):
            f[f"levels/{size}/done"][:] = False
            f[f"levels/{size}/icons"][:] = 0
    build_tiles(run.cells, run.icons, tmp_path / "gamma" / "tiles", progress=False)
    server = make_server(tmp_path / "gamma", port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    p = Page(browser, server)
    try:
        cells = _get(server, "data/tiles/meta/48/0-0.json")["cells"]
        cell = max(cells, key=lambda c: c["count"])
        fb = cell["fallback"]
        assert not cell["done"] and (fb["size"], fb["iy"], fb["ix"]) == (12, cell["iy"] // 4, cell["ix"] // 4)
        deepest = _get(server, "data/tiles/manifest.json")["max_native_zoom"]
        p.open(f"#z={deepest}&x={(cell['ix'] + 0.5) / 48:.4f}&y={(cell['iy'] + 0.5) / 48:.4f}")
        assert p.js("document.body.dataset.level") == "48"
        status = p.page.inner_text("#status-pending")
        n48 = len(run.cell_ids[48])
        assert f"grid 48×48: {n48:,} of {n48:,} icons not rendered" in status
        assert "shown as the 12×12 icons of their area, scaled" in status and "grey" not in status
        assert p.js("document.body.dataset.fallback") == "1"
        # the pixels at the cell: its grid-12 ancestor's icon (a flat colour with a lighter ring), not grey
        # loaded and faded in (Leaflet fades a new tile from transparent: a pixel read mid-fade is
        # the tile blended with the page's background)
        p.page.wait_for_function("() => [...document.querySelectorAll('img.leaflet-tile')].length > 0 && "
                                 "[...document.querySelectorAll('img.leaflet-tile')].every(i => i.complete"
                                 " && getComputedStyle(i).opacity === '1')",
                                 timeout=15_000)
        x, y = p.point_of(48, cell)
        shot = Image.open(io.BytesIO(p.page.screenshot())).convert("RGB")
        got = np.array(shot.getpixel((int(x), int(y))), int)
        icon = fake_icons(12, np.array([fb["iy"] * 12 + fb["ix"]]), 32)[0].reshape(-1, 3).astype(int)
        assert (got >= icon.min(0) - 12).all() and (got <= icon.max(0) + 12).all(), got
        assert np.abs(got - [0xD9, 0xD7, 0xD0]).max() > 12  # not the placeholder grey
        shots(p.page, "fallback.png")
        # the tooltip says whose icon the area shows, and shows it
        p.page.mouse.move(x - 30, y - 30)
        p.page.mouse.move(x, y, steps=4)
        p.page.wait_for_selector("#tooltip:not([hidden])", timeout=5_000)
        assert (f"icon not rendered: the grid 12×12 icon of this area (cell {fb['iy']}, {fb['ix']}), scaled"
                in p.page.inner_text("#tooltip"))
        assert p.js("document.querySelector('#tooltip .tt-icon').className").split() == ["tt-icon", "fallback", "sprite"]
        assert p.js("document.querySelector('#tooltip .tt-icon').dataset.sprite") == fb["icon"]["sprite"]
        p.page.mouse.click(x, y)
        p.page.wait_for_selector("#panel:not([hidden])", timeout=5_000)
        assert "icon not rendered: the grid 12×12 icon" in p.page.inner_text("#panel .panel-fallback")
        assert "null" not in p.page.inner_text("#panel")
        # zoomed out to a rendered grid, nothing is said
        p.js("atlasViewer.map.setZoom(1)")
        p.page.wait_for_function("() => document.body.dataset.level === '12'", timeout=5_000)
        assert p.page.inner_text("#status-pending") == f"{len(run.cell_ids[24]) + n48:,} icons of other grids not rendered"
    finally:
        p.close()
        server.shutdown()
        server.server_close()
