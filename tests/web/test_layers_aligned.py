"""A multi-layer run's layer row and an aligned atlas's side-by-side view, in the server's run
listing and in the viewer (headless Chromium driven by Playwright against `atlas serve`).

The site: ``multi/layers/<layer>/tiles`` for four of the five layers of its ``layer_set`` (the
fourth, ``inception4e``, not built), ``multi/aligned/pair/{a,b}/tiles`` (two sides of one layout
on different grids, so different world and content sizes) and an ordinary run ``beta/tiles``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_viewer import Page, browser, shots  # noqa: F401 (browser and shots are fixtures)

from atlas.stages.tiles import build_tiles
from atlas.web.export import export_site
from atlas.web.serve import Run, find_runs, make_server
from atlasfixture import write_fake_run

LAYERS = ["inception3b", "inception4a", "inception4c", "inception4e", "inception5b"]
BUILT = [name for name in LAYERS if name != "inception4e"]
#: each layer atlas on its own grids: switching layers must keep the view in relative terms
LAYER_SIZES = {"inception3b": (4, 8, 16), "inception4a": (8, 16, 32), "inception4c": (6, 12, 24),
               "inception5b": (4, 8)}
SIDES = {"a": ((8, 16, 32), "inception4a"), "b": ((6, 12, 24), "InceptionV1 (random init) inception4c")}
LAYER_ID = "multi/layers/{}/tiles"
SIDE_ID = "multi/aligned/pair/{}/tiles"


def _atlas(folder: Path, sizes, seed: int, **manifest) -> None:
    run = write_fake_run(folder, sizes=sizes, icon_size=16, n_points=900, n_images=6, examples=2, seed=seed)
    build_tiles(run.cells, run.icons, folder / "tiles", progress=False, **manifest)


def build_site(root: Path) -> Path:
    for i, layer in enumerate(BUILT):
        folder = root / "multi" / "layers" / layer
        _atlas(folder, LAYER_SIZES[layer], seed=10 + i, layer_set=LAYERS)
        path = folder / "tiles" / "manifest.json"  # the fixture's cells all say one layer; name each its own
        path.write_text(json.dumps({**json.loads(path.read_text()), "layer": layer}))
    for side, (sizes, label) in SIDES.items():
        other = "b" if side == "a" else "a"
        _atlas(root / "multi" / "aligned" / "pair" / side, sizes, seed=3, aligned={
            "name": "pair", "side": side, "label": label, "peer": f"../../{other}/tiles", "peer_label": SIDES[other][1]})
    _atlas(root / "beta", (4, 8), seed=2)
    return root


def serve(folder: Path):
    server = make_server(folder, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/"
    return server


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("layers-aligned"))


@pytest.fixture(scope="module")
def site(root):
    server = serve(root)
    yield server
    server.shutdown()
    server.server_close()


def _get(server, path: str):
    with urllib.request.urlopen(server.base_url + path.lstrip("/"), timeout=10) as r:
        return json.loads(r.read())


def _runs(server) -> dict[str, dict]:
    return {r["id"]: r for r in _get(server, "api/runs")["runs"]}


# ---- the server's listing ----------------------------------------------------------------------


@pytest.mark.parametrize("served, prefix", [(None, "multi/"), ("multi", "")])
def test_the_listing_names_the_layers_and_the_aligned_peer(root, served, prefix):
    """Served from the folder of runs or from the run folder itself, every layer atlas and both
    sides of the aligned atlas (5 folders below the folder of runs) are found and linked."""
    server = serve(root / served if served else root)
    try:
        runs = _runs(server)
        ids = [prefix + f"layers/{layer}/tiles" for layer in BUILT]
        sides = {s: prefix + f"aligned/pair/{s}/tiles" for s in "ab"}
        assert set(runs) == {*ids, *sides.values()} | ({"beta/tiles"} if not served else set())
        for layer, run_id in zip(BUILT, ids):
            run = runs[run_id]
            assert run["layers"] == {"group": prefix.rstrip("/"), "names": LAYERS,
                                     "ids": {n: prefix + f"layers/{n}/tiles" for n in BUILT}}
            assert run["layer"] == layer and run["name"] == "multi" and run["aligned"] is None
        for side, other in (("a", "b"), ("b", "a")):
            assert runs[sides[side]]["aligned"] == {"name": "pair", "side": side, "label": SIDES[side][1],
                                                    "peer_id": sides[other], "peer_label": SIDES[other][1]}
            assert runs[sides[side]]["layers"] is None and runs[sides[side]]["name"] == "multi"
        if not served:
            assert runs["beta/tiles"]["layers"] is None and runs["beta/tiles"]["aligned"] is None
        # the tiles of the deepest atlas are served
        assert _get(server, f"data/{sides['b']}/manifest.json")["aligned"]["side"] == "b"
    finally:
        server.shutdown()
        server.server_close()
    assert len(find_runs(root)) == 7


def _run(run_id: str, manifest: dict, path: Path) -> Run:
    return Run(run_id, path, manifest, 0, "r")


def test_describe_without_or_with_malformed_fields_gives_null(tmp_path):
    """A manifest without ``layer_set``/``aligned``, or with anything but the contract's shapes in
    them, is listed with ``layers``/``aligned`` null; never an error."""
    tiles = tmp_path / "run" / "layers" / "l1" / "tiles"
    base = {"kind": "atlas-tiles", "layer": "l1"}
    plain = _run("run/layers/l1/tiles", base, tiles).describe()
    assert plain["layers"] is None and plain["aligned"] is None
    for layer_set in (None, "l1,l2", [], [1, 2], ["l1", None], ["l1", ""], ["a/b"], ["x" * 201], {"l1": 1}):
        assert _run("run/layers/l1/tiles", {**base, "layer_set": layer_set}, tiles).describe()["layers"] is None
    # a layer set on an atlas that is not RUN/layers/<layer>/tiles
    for other in ("run/tiles", "run/layers/tiles", "run/layers/l1/tiles/x", "run/classes/l1/tiles"):
        assert _run(other, {**base, "layer_set": ["l1"]}, tiles).describe()["layers"] is None
    # alone (no other atlas known), only itself is present; repeated names count once
    alone = _run("run/layers/l1/tiles", {**base, "layer_set": ["l0", "l1", "l1"]}, tiles).describe()["layers"]
    assert alone == {"group": "run", "names": ["l0", "l1"], "ids": {"l1": "run/layers/l1/tiles"}}
    assert _run("layers/l1/tiles", {**base, "layer_set": ["l1"]}, tiles).describe()["layers"]["group"] == ""

    side = tmp_path / "run" / "aligned" / "p" / "a" / "tiles"
    good = {"name": "p", "side": "a", "label": "A", "peer": "../../b/tiles", "peer_label": "B"}
    for entry in (None, "p", [], {**good, "name": ""}, {**good, "name": 3}, {**good, "side": "c"},
                  {k: v for k, v in good.items() if k != "side"}):
        assert _run("run/aligned/p/a/tiles", {**base, "aligned": entry}, side).describe()["aligned"] is None
    # the peer: not served, or a path that leads nowhere or is not a path -> peer_id null
    for peer in ("../../b/tiles", "/", "../" * 50, "\0", 7, None, "x" * 2000, ""):
        got = _run("run/aligned/p/a/tiles", {**base, "aligned": {**good, "peer": peer}}, side).describe()["aligned"]
        assert got == {"name": "p", "side": "a", "label": "A", "peer_id": None, "peer_label": "B"}
    # labels that are not text: the side's letters instead
    got = _run("run/aligned/p/a/tiles", {**base, "aligned": {**good, "label": 5, "peer_label": ["x"]}}, side).describe()
    assert (got["aligned"]["label"], got["aligned"]["peer_label"]) == ("a", "b")
    # with the peer served, its id; a peer that is the atlas itself is no peer
    peer = _run("run/aligned/p/b/tiles", {**base}, (side / "../../b/tiles").resolve())
    me = _run("run/aligned/p/a/tiles", {**base, "aligned": good}, side.resolve())
    runs = {r.id: r for r in (me, peer)}
    assert me.describe(runs)["aligned"]["peer_id"] == "run/aligned/p/b/tiles"
    itself = _run("run/aligned/p/a/tiles", {**base, "aligned": {**good, "peer": "."}}, side.resolve())
    assert itself.describe({itself.id: itself})["aligned"]["peer_id"] is None


# ---- the viewer --------------------------------------------------------------------------------


@pytest.fixture
def vpage(browser, site):  # noqa: F811 (the fixture imported above)
    p = Page(browser, site)
    yield p
    p.close()


def _layout_view(vpage, side: str = "main") -> tuple[float, float, float]:
    """Where a map is, in relative terms, from its Leaflet state and the manifest fields alone:
    the layout point at its centre (u, v) and log2 of the layout's width on screen in pixels."""
    return tuple(vpage.js("""(which) => {
        const s = which === 'main' ? atlasViewer.state : atlasViewer.aligned.peer;
        const c = s.map.getCenter(), m = s.m, z = s.map.getZoom();
        return [(c.lng - m.margin_px) / m.content_px, (c.lat - m.margin_px) / m.content_px,
                Math.log2(m.content_px) + z - m.max_native_zoom]; }""", side))


def _opened(vpage, run_id: str) -> None:
    vpage.page.wait_for_function("(id) => document.body.dataset.opened === id", arg=run_id, timeout=10_000)


@pytest.mark.browser
def test_the_layer_row_switches_layers_keeping_class_search_and_view(vpage, site, shots):  # noqa: F811
    start = LAYER_ID.format("inception4a")
    vpage.open(f"#run={start}&z=3&x=0.3&y=0.6&class=pizza")
    _opened(vpage, start)
    row = vpage.page.locator("#layer-row")
    assert row.is_visible()
    assert row.locator("button.layer").all_inner_texts() == LAYERS  # the model's order
    assert vpage.js("[...document.querySelectorAll('#layer-row button.current')].map(b => b.textContent)") == ["inception4a"]
    assert row.locator("button[data-layer='inception4a']").get_attribute("aria-pressed") == "true"
    missing = row.locator("button[data-layer='inception4e']")
    assert missing.is_disabled() and "not built" in missing.get_attribute("title")
    assert "not built" in row.locator(".layer-slot:has(button[data-layer='inception4e'])").get_attribute("title")
    assert all(row.locator(f"button[data-layer='{n}']").is_enabled() for n in BUILT)
    # the atlas picker groups the run's layer atlases, in the model's order
    assert vpage.js("[...document.querySelectorAll('#run-select optgroup')].map(g => g.label)") == [
        "multi · layers", "multi · aligned pair"]
    assert vpage.js("[...document.querySelectorAll('#run-select optgroup')[0].children].map(o => o.textContent)") == BUILT
    vpage.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
    vpage.page.fill("#search-input", "gold")  # typed, not picked
    before = _layout_view(vpage)
    shots(vpage.page, "layer-row.png")

    target = LAYER_ID.format("inception4c")
    row.locator("button[data-layer='inception4c']").click()
    _opened(vpage, target)
    vpage.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
    assert int(vpage.js("document.body.dataset.highlightCount")) > 0  # re-applied on the new atlas
    assert vpage.page.inner_text("#class-name") == "pizza" and vpage.page.is_visible("#class-chip")
    assert vpage.page.input_value("#search-input") == "gold"
    after = _layout_view(vpage)
    assert after[:2] == pytest.approx(before[:2], abs=2e-3)
    assert after[2] == pytest.approx(before[2], abs=0.126)  # zooms snap to quarters
    assert vpage.js("[...document.querySelectorAll('#layer-row button.current')].map(b => b.textContent)") == ["inception4c"]
    assert vpage.page.locator("#layer-row button[data-layer='inception4a']").is_enabled()
    assert vpage.js("document.getElementById('run-select').value") == target
    vpage.page.wait_for_function("(id) => location.hash.includes('run=' + id) && location.hash.includes('class=pizza')",
                                 arg=target, timeout=5_000)

    vpage.page.reload()  # the hash brings the chosen layer back
    vpage.page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    _opened(vpage, target)
    vpage.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
    assert vpage.js("[...document.querySelectorAll('#layer-row button.current')].map(b => b.textContent)") == ["inception4c"]
    assert _layout_view(vpage) == pytest.approx(after, abs=2e-3)


@pytest.mark.browser
def test_an_ordinary_run_has_no_layer_row_and_one_map(vpage):
    vpage.open("#run=beta/tiles&z=1&x=0.5&y=0.5")
    _opened(vpage, "beta/tiles")
    assert vpage.page.is_hidden("#layer-row") and vpage.page.is_hidden("#map-peer")
    assert vpage.page.is_hidden("#aligned-toggle") and vpage.page.is_hidden("#map-label")
    assert _maps_shown(vpage) == 1
    assert vpage.js("document.body.classList.contains('aligned')") is False


def _maps_shown(vpage) -> int:
    return vpage.js("[...document.querySelectorAll('.leaflet-container')].filter(e => e.offsetParent !== null"
                    " && e.querySelector('.leaflet-tile-pane')).length")


def _peer_ready(vpage) -> None:
    vpage.page.wait_for_function("() => document.body.dataset.peerReady === '1' && atlasViewer.aligned.peer", timeout=15_000)


def _linked(vpage) -> tuple[tuple, tuple]:
    main, peer = _layout_view(vpage, "main"), _layout_view(vpage, "peer")
    assert peer[:2] == pytest.approx(main[:2], abs=2e-3)
    assert peer[2] == pytest.approx(main[2], abs=0.126)
    return main, peer


def _box(vpage, selector: str) -> dict:
    return vpage.page.locator(selector).bounding_box()


@pytest.mark.browser
def test_the_aligned_view_links_both_maps(vpage, site, shots):  # noqa: F811
    a, b = SIDE_ID.format("a"), SIDE_ID.format("b")
    vpage.open(f"#run={a}&z=3&x=0.4&y=0.45")
    _peer_ready(vpage)
    assert _maps_shown(vpage) == 2
    left, right = _box(vpage, "#map"), _box(vpage, "#map-peer")
    assert left["x"] == 0 and right["x"] == pytest.approx(left["width"], abs=1) and left["width"] == pytest.approx(640, abs=1)
    assert vpage.page.inner_text("#map-label") == SIDES["a"][1]
    assert vpage.page.inner_text("#peer-label") == SIDES["b"][1]
    assert vpage.js("document.body.dataset.aligned") == b
    start, _ = _linked(vpage)
    assert start[:2] == pytest.approx((0.4, 0.45), abs=2e-3)

    # dragging the main map moves the other to the same place
    cx, cy = left["x"] + left["width"] / 2, left["y"] + left["height"] / 2
    vpage.page.mouse.move(cx, cy)
    vpage.page.mouse.down()
    vpage.page.mouse.move(cx - 150, cy - 90, steps=8)
    vpage.page.mouse.up()
    vpage.page.wait_for_timeout(400)
    moved, _ = _linked(vpage)
    assert moved[0] > start[0] + 0.05 and moved[1] > start[1] + 0.03

    # zooming the other map zooms the main one
    vpage.page.click("#map-peer .leaflet-control-zoom-out")
    vpage.page.wait_for_timeout(600)
    zoomed, _ = _linked(vpage)
    assert zoomed[2] == pytest.approx(moved[2] - 0.5, abs=0.126)
    vpage.page.wait_for_function("() => location.hash.includes('z=2.50')", timeout=5_000)  # the main map's hash follows
    # the wheel on the main map zooms the other (animated on one, followed on the other), and then
    # both rest: no map keeps moving the other
    z0 = vpage.js("atlasViewer.map.getZoom()")
    vpage.page.mouse.move(cx, cy)
    vpage.page.mouse.wheel(0, -60)  # a little: both sides stay within their zoom ranges
    vpage.page.wait_for_function("(z) => atlasViewer.map.getZoom() > z", arg=z0, timeout=5_000)
    vpage.page.wait_for_timeout(600)
    rest = _linked(vpage)
    vpage.page.wait_for_timeout(400)
    assert _linked(vpage) == rest

    # hovering one map puts a crosshair at the same point of the other, with the hover's tooltip;
    # the point: the centre of the fullest cell of the other side's grid 24 (both sides hold the
    # same points), brought to the middle of the maps
    cell = max(_get(site, f"data/{b}/meta/24/0-0.json")["cells"], key=lambda c: c["count"])
    u, v = (cell["ix"] + 0.5) / 24, (cell["iy"] + 0.5) / 24
    vpage.js("([u, v]) => atlasViewer.map.setView(atlasViewer.toLatLng(u, v), 2.5, { animate: false })", [u, v])
    _linked(vpage)
    assert vpage.js("document.body.dataset.peerLevel") == "24"
    x, y = vpage.js("""([u, v]) => { const p = atlasViewer.map.latLngToContainerPoint(atlasViewer.toLatLng(u, v));
                                     return [p.x, p.y]; }""", [u, v])
    vpage.page.mouse.move(x + 20, y + 20)
    vpage.page.mouse.move(x, y, steps=3)
    vpage.page.wait_for_selector("body[data-cross='peer']", timeout=5_000)
    peer_m = _get(site, f"data/{b}/manifest.json")
    lat, lng = vpage.js("(() => { const p = atlasViewer.aligned.cross.getLatLng(); return [p.lat, p.lng]; })()")
    assert ((lng - peer_m["margin_px"]) / peer_m["content_px"], (lat - peer_m["margin_px"]) / peer_m["content_px"]) == \
        pytest.approx((u, v), abs=3e-3)
    vpage.page.wait_for_selector("#tooltip:not([hidden])", timeout=5_000)
    assert vpage.js("document.getElementById('tooltip').dataset.side") == "main"
    shots(vpage.page, "aligned.png")
    # and the other way round: the tooltip of the other side's cell, the crosshair on the main map
    px, py = vpage.js("""([u, v]) => { const s = atlasViewer.aligned.peer;
        const p = s.map.latLngToContainerPoint(atlasViewer.toLatLng(u, v, s)); return [p.x, p.y]; }""", [u, v])
    px += right["x"]
    vpage.page.mouse.move(px + 20, py + 20)
    vpage.page.mouse.move(px, py, steps=3)
    vpage.page.wait_for_selector("body[data-cross='main']", timeout=5_000)
    main_m = _get(site, f"data/{a}/manifest.json")
    lat, lng = vpage.js("(() => { const p = atlasViewer.aligned.cross.getLatLng(); return [p.lat, p.lng]; })()")
    assert ((lng - main_m["margin_px"]) / main_m["content_px"], (lat - main_m["margin_px"]) / main_m["content_px"]) == \
        pytest.approx((u, v), abs=3e-3)
    vpage.page.wait_for_selector("#tooltip[data-side='peer']:not([hidden])", timeout=5_000)
    level = int(vpage.js("document.body.dataset.peerLevel"))
    size_cell = vpage.js("document.getElementById('tooltip').dataset.cell").split(":")
    assert int(size_cell[0]) == level and int(size_cell[1]) == int(v * level) * level + int(u * level)
    assert f"grid {level}×{level}" in vpage.page.inner_text("#tooltip")
    brand = _box(vpage, "#bar .brand")  # off the maps: no tooltip, no crosshair
    vpage.page.mouse.move(brand["x"] + 10, brand["y"] + 10, steps=3)
    vpage.page.wait_for_selector("#tooltip", state="hidden", timeout=5_000)
    assert vpage.js("document.body.dataset.cross") is None


@pytest.mark.browser
def test_the_aligned_view_goes_back_to_one_map_and_opens_from_either_side(vpage):
    a, b = SIDE_ID.format("a"), SIDE_ID.format("b")
    vpage.open(f"#run={b}&z=2&x=0.5&y=0.5")
    _peer_ready(vpage)
    # side b opened: the main map is b, on the right; a on the left
    assert vpage.js("document.body.classList.contains('main-right')") is True
    assert _box(vpage, "#map")["x"] == pytest.approx(640, abs=1) and _box(vpage, "#map-peer")["x"] == 0
    assert vpage.js("atlasViewer.aligned.peer.run.id") == a
    _linked(vpage)
    assert vpage.page.inner_text("#aligned-toggle") == "Single map"
    before = _layout_view(vpage)
    vpage.page.click("#aligned-toggle")
    vpage.page.wait_for_function("() => !atlasViewer.aligned.peer", timeout=5_000)
    assert vpage.page.is_hidden("#map-peer") and _maps_shown(vpage) == 1
    assert _box(vpage, "#map")["width"] == 1280
    assert _layout_view(vpage) == pytest.approx(before, abs=2e-3)  # the map stays where it was
    assert vpage.page.inner_text("#aligned-toggle") == "Side by side"
    vpage.page.wait_for_function("() => location.hash.includes('single=1')", timeout=5_000)
    vpage.page.reload()
    vpage.page.wait_for_selector("body[data-ready='1']", timeout=20_000)
    _opened(vpage, b)
    assert vpage.page.is_hidden("#map-peer") and _maps_shown(vpage) == 1
    vpage.page.click("#aligned-toggle")
    _peer_ready(vpage)
    _linked(vpage)
    vpage.page.wait_for_function("() => !location.hash.includes('single')", timeout=5_000)
    # another atlas from the picker: the other map goes
    vpage.page.select_option("#run-select", "beta/tiles")
    _opened(vpage, "beta/tiles")
    assert vpage.page.is_hidden("#map-peer") and _maps_shown(vpage) == 1
    assert vpage.js("document.body.dataset.aligned") is None


@pytest.mark.browser
def test_both_features_work_from_an_exported_site(browser, root, tmp_path):  # noqa: F811 (the fixture)
    """`atlas export` of the folder of runs: atlas.json carries the same fields, and the viewer
    (reading files only, from a plain static server) shows the layer row and both aligned maps."""
    site = tmp_path / "site"
    export_site(root, site)
    listed = {r["id"]: r for r in json.loads((site / "atlas.json").read_text())["runs"]}
    assert listed[LAYER_ID.format("inception4a")]["layers"]["names"] == LAYERS
    assert listed[SIDE_ID.format("a")]["aligned"]["peer_id"] == SIDE_ID.format("b")
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d", str(site)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    p = None
    try:
        port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
        p = Page(browser, SimpleNamespace(base_url=f"http://127.0.0.1:{port}/"))
        p.open(f"#run={LAYER_ID.format('inception4a')}&z=2&x=0.5&y=0.5&class=pizza")
        p.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
        p.page.click("#layer-row button[data-layer='inception5b']")
        _opened(p, LAYER_ID.format("inception5b"))
        p.page.wait_for_selector("body[data-highlight-class='pizza']", timeout=5_000)
        p.js(f"location.hash = '#run={SIDE_ID.format('a')}&z=2&x=0.5&y=0.5'")
        _peer_ready(p)
        _linked(p)
        assert p.js("atlasViewer.state.api") is False and not [u for u in p.requests if "/api/" in u]
    finally:
        if p is not None:
            p.close()
        proc.terminate()
        proc.wait(timeout=10)
