"""A comparison atlas in the viewer: its axis (which class lies on which side, from the manifest)
and the neighbourhoods `atlas attack` chose for its two classes (``/api/attacks``), placed on it
through their rows; checked against positions computed here from the files."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlas.models import load_model
from atlas.stages.classes import SubAtlasSettings, compare_folder, comparison_atlas, slug
from atlas.store.activations import ActivationsFile

#: few rows per class (class_top_n=3), so that some cells of the main grid hold no comparison row
SMALL = SubAtlasSettings(sizes=(2, 3), min_count=1, class_top_n=3, icon_size=64, steps=2, batch_size=8)
PAYLOAD = '<img src=x onerror="window.atlasPwned=1">'


@pytest.fixture(scope="module")
def pair(tiny_run: Path, tmp_path_factory):
    """A private copy of the tiny run with the comparison atlas of its two most listed classes."""
    run = tmp_path_factory.mktemp("marks") / "run"
    shutil.copytree(tiny_run, run)
    with ActivationsFile(run / "activations.h5") as f:
        top = f.read(None, "attribution/top_classes")
    (a, _), (b, _) = Counter(top.ravel().tolist()).most_common(2)
    model = load_model("inceptionv1", random_init=True, device="cpu")
    comparison_atlas(run, str(a), str(b), model, SMALL, device="cpu", progress=False)
    names = model.class_names
    folder = compare_folder(run, names[a], names[b])
    return {"run": run, "folder": folder, "id": f"compare/{slug(names[a])}--{slug(names[b])}/tiles",
            "a": names[a], "b": names[b], "a_index": int(a), "b_index": int(b)}


def _expected(run: Path, folder: Path, level: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Independently of the server: ``{main cell id: xy of its rows on the comparison}`` and the
    rows per main cell, at grid ``level``, read straight from the two layout files."""
    with h5py.File(run / "layout.h5", "r") as f:
        main_ids, main_xy, main_ok = f["row_ids"][:], f["xy"][:], f["valid"][:]
    with h5py.File(folder / "layout.h5", "r") as f:
        comp_ids, comp_xy, comp_ok = f["row_ids"][:], f["xy"][:], f["valid"][:]
    ij = np.minimum(np.floor(main_xy[main_ok].astype(np.float64) * level), level - 1).astype(int)
    cell = dict(zip(main_ids[main_ok].tolist(), (ij[:, 1] * level + ij[:, 0]).tolist()))
    per_cell = np.bincount(ij[:, 1] * level + ij[:, 0], minlength=level * level)
    on: dict[int, list[np.ndarray]] = {}
    for row, xy, ok in zip(comp_ids.tolist(), comp_xy, comp_ok):
        if ok and row in cell:
            on.setdefault(cell[row], []).append(xy.astype(np.float64))
    return {c: np.stack(v) for c, v in on.items()}, per_cell


@pytest.fixture(scope="module")
def reports(pair):
    """Attack reports in the run: the article protocol's (a third-class cell with no comparison
    row, and the fullest cell on it, as a target cell), a best-of report of the other direction,
    one of another class pair and a broken one."""
    run, folder = pair["run"], pair["folder"]
    level = 4  # the tiny run's finest grid
    on, per_cell = _expected(run, folder, level)
    full = max(on, key=lambda c: (len(on[c]), -c))
    empty = [c for c in range(level * level) if c not in on and per_cell[c] > 0]
    off = empty[0] if empty else next(c for c in range(level * level) if c not in on)

    def cand(cid: int, classes: list[str]) -> dict:
        return {"cell": [level, cid // level, cid % level], "score": 0.25, "target_attribution": 0.5,
                "source_attribution": 0.25, "count": 9, "classes": classes}

    def name(cid: int) -> str:
        return f"cell {level}:{cid // level},{cid % level}"

    attacks = run / "attacks"
    article = attacks / f"{pair['b']}-to-{pair['a']}".replace(" ", "_")
    article.mkdir(parents=True)
    (article / "protocol.json").write_text(json.dumps({
        "source": pair["b"], "target": pair["a"], "level": level,
        "candidates": {"third": [cand(off, ["tench", PAYLOAD])], "target": [cand(full, [pair["a"], "goldfish"])],
                       "random_cell": [cand(full, ["control"])]},
        "families": {"third": {"members": [name(off)], "per_patch_dynamic": [0.1]},
                     "target": {"members": [name(full)], "per_patch_dynamic": [0.4]}},
    }))
    best = attacks / f"{pair['a']}-to-{pair['b']}".replace(" ", "_")
    best.mkdir()
    (best / "report.json").write_text(json.dumps({
        "source": pair["a"], "target": pair["b"], "source_index": pair["a_index"], "target_index": pair["b_index"],
        "level": level, "settings": {"kind": "target"}, "candidates": [cand(full, ["x"])], "random_cells": [],
        "families": {"atlas": {"members": [name(full)], "chosen": 0, "dynamic_any_size": 0.75}},
    }))
    other = attacks / "tench-to-goldfish"
    other.mkdir()
    (other / "report.json").write_text(json.dumps({"source": "tench", "target": "goldfish", "level": level,
                                                   "candidates": [cand(full, [])]}))
    broken = attacks / "broken"
    broken.mkdir()
    (broken / "report.json").write_text("{not json")
    return {"level": level, "full": full, "off": off, "on": on, "per_cell": per_cell}


@pytest.fixture(scope="module")
def server(pair, reports):
    from atlas.web.serve import make_server

    srv = make_server(pair["run"], port=0)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/"
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(server, target: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=20)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        assert resp.getheader("Content-Type") == "application/json"
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_run_listing_says_which_class_lies_on_which_side(server, pair) -> None:
    status, doc = _get(server, "/api/runs")
    runs = {r["id"]: r for r in doc["runs"]}
    assert status == 200 and runs["tiles"]["comparison"] is None
    axis = runs[pair["id"]]["comparison"]
    assert axis["left"] == {"index": pair["b_index"], "name": pair["b"]}
    assert axis["right"] == {"index": pair["a_index"], "name": pair["a"]}
    assert axis["x"] == "attribution difference"


def test_attack_cells_are_placed_by_the_centroid_of_their_rows(server, pair, reports) -> None:
    from urllib.parse import quote

    status, doc = _get(server, f"/api/attacks?run={quote(pair['id'])}")
    assert status == 200, doc
    level, full, off = reports["level"], reports["full"], reports["off"]
    assert sorted(r["report"] for r in doc["reports"]) == sorted([
        f"{pair['a']}-to-{pair['b']}".replace(" ", "_") + "/report.json",
        f"{pair['b']}-to-{pair['a']}".replace(" ", "_") + "/protocol.json"])  # not the other pair's
    assert [s["report"] for s in doc["skipped"]] == ["broken/report.json"]
    xy = reports["on"][full]
    cell = [level, full // level, full % level]
    marks = [m for m in doc["marks"] if m["cell"] == cell]
    assert {(m["kind"], m["success"]) for m in marks} == {("target", 0.4), ("target", 0.75)}
    for m in marks:
        np.testing.assert_allclose(m["center"], xy.mean(axis=0), atol=1e-5)
        np.testing.assert_allclose(m["bbox"], [*xy.min(axis=0), *xy.max(axis=0)], atol=1e-5)
        assert m["rows"] == len(xy) and m["cell_rows"] == reports["per_cell"][full]
        assert m["radius"] == pytest.approx(np.sqrt(((xy - xy.mean(axis=0)) ** 2).sum(axis=1).mean()), abs=1e-5)
    assert all(m["kind"] != "random_cell" for m in doc["marks"] + doc["off_map"])  # controls are not marked
    [gone] = doc["off_map"]
    assert gone["cell"] == [level, off // level, off % level] and gone["kind"] == "third" and gone["rows"] == 0
    assert "center" not in gone and gone["classes"] == ["tench", PAYLOAD] and gone["success"] == 0.1


def test_attacks_of_a_bad_run_or_of_an_atlas_that_is_no_comparison_are_refused(server) -> None:
    status, doc = _get(server, "/api/attacks?run=no/such/tiles")
    assert status == 404 and "no atlas" in doc["error"]
    status, doc = _get(server, "/api/attacks?run=tiles")
    assert status == 404 and "not a comparison atlas" in doc["error"]
    status, doc = _get(server, "/api/attacks")  # several atlases are served
    assert status == 400 and "pass run=" in doc["error"]


def test_a_changed_report_is_read_again_and_an_old_comparison_has_no_axis(server, pair, reports) -> None:
    import os
    from urllib.parse import quote

    from atlas.web.serve.runs import comparison_axis

    path = pair["run"] / "attacks" / f"{pair['a']}-to-{pair['b']}".replace(" ", "_") / "report.json"
    before = path.read_text()
    try:
        doc = json.loads(before)
        doc["families"]["atlas"]["dynamic_any_size"] = 0.5
        path.write_text(json.dumps(doc))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        _, answer = _get(server, f"/api/attacks?run={quote(pair['id'])}")
        assert 0.5 in {m["success"] for m in answer["marks"]}
    finally:
        path.write_text(before)
    assert comparison_axis({"title": "Comparison: b (left) vs a (right)"}) is None  # tiled before it was recorded
    assert comparison_axis({"comparison": {"left": {"name": "b"}, "right": "a"}}) is None


def test_an_export_holds_the_marks_the_server_answers(server, pair, tmp_path) -> None:
    from urllib.parse import quote

    from atlas.web.export import export_site

    export_site(pair["run"], tmp_path / "site")
    _, answer = _get(server, f"/api/attacks?run={quote(pair['id'])}")
    assert json.loads((tmp_path / "site" / "data" / pair["id"] / "attacks.json").read_text()) == answer
    assert not (tmp_path / "site" / "data" / "tiles" / "attacks.json").exists()  # the main atlas has none
    listed = {r["id"]: r for r in json.loads((tmp_path / "site" / "atlas.json").read_text())["runs"]}
    assert listed[pair["id"]]["comparison"]["left"]["name"] == pair["b"]


@pytest.mark.browser
def test_the_viewer_draws_the_axis_and_the_marks_of_a_comparison(server, pair, reports) -> None:
    from browserkit import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _require_browser

    sync_playwright = _require_browser()
    level, full, off = reports["level"], reports["full"], reports["off"]
    center = reports["on"][full].mean(axis=0)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(server.base_url + f"#run={pair['id']}")
        page.wait_for_selector("body[data-ready='1']", timeout=20_000)
        page.wait_for_selector("#axis:not([hidden])", timeout=10_000)
        page.wait_for_function("() => document.body.dataset.attackMarks === '1'", timeout=10_000)

        # the axis: the left class to the left of "attribution difference", the right one to its right
        assert page.inner_text("#axis-left") == pair["b"] and page.inner_text("#axis-right") == pair["a"]
        assert page.inner_text("#axis-mid") == "attribution difference"
        box = {k: page.locator(f"#axis-{k}").bounding_box() for k in ("left", "mid", "right")}
        assert box["left"]["x"] + box["left"]["width"] <= box["mid"]["x"]
        assert box["mid"]["x"] + box["mid"]["width"] <= box["right"]["x"]
        assert "←" in page.inner_text("#axis .axis-side.left") and "→" in page.inner_text("#axis .axis-side.right")

        # the target cell, chosen by both reports: one mark at the centroid of its rows, labelled
        key = f"{level}:{full // level}:{full % level}"
        expected = page.evaluate(
            "([u, v]) => { const p = atlasViewer.map.latLngToContainerPoint(atlasViewer.toLatLng(u, v)); "
            "const r = document.getElementById('map').getBoundingClientRect(); return [p.x + r.left, p.y + r.top]; }",
            [float(center[0]), float(center[1])])
        dots = page.locator(f"path.attack-mark[data-cell='{key}']")
        assert dots.count() == 1
        b = dots.bounding_box()
        assert abs(b["x"] + b["width"] / 2 - expected[0]) < 3 and abs(b["y"] + b["height"] / 2 - expected[1]) < 3
        label = page.inner_text(f".attack-label[data-cell='{key}']")
        assert f"cell {level}:{full // level},{full % level}" in label and pair["a"] in label
        assert "target · 40% flipped" in label and "target · 75% flipped" in label
        assert page.locator("#attack-list li").count() == 2  # the list has a line per report

        # the third-class cell with no row here is listed, not drawn; its odd class name is text
        off_key = f"{level}:{off // level}:{off % level}"
        assert page.locator(f"path.attack-mark[data-cell='{off_key}']").count() == 0
        listed = page.inner_text(f"#attack-off-list li[data-cell='{off_key}']")
        assert PAYLOAD in listed and "third" in listed
        assert page.locator('img[src="x"]').count() == 0 and page.evaluate("window.atlasPwned") is None

        page.uncheck("#attack-toggle")  # the legend's checkbox hides the marks
        assert page.locator("path.attack-mark").count() == 0
        page.check("#attack-toggle")
        assert page.locator("path.attack-mark").count() == 1

        page.select_option("#run-select", "tiles")  # the main atlas: no axis, no marks
        page.wait_for_function("() => document.querySelector('#run-select').value === 'tiles'")
        page.wait_for_selector("#axis", state="hidden", timeout=10_000)
        page.wait_for_timeout(500)
        assert page.locator("path.attack-mark").count() == 0 and page.is_hidden("#attack-part")
        browser.close()
    assert errors == [], errors
