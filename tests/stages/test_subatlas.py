"""Class atlases and comparison atlases: built inside a run, skipped when current, served, shown."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlas.models import load_model
from atlas.stages.classes import SubAtlasSettings, class_atlas, class_folder, compare_folder, comparison_atlas, slug
from atlas.stages.reduce import class_attribution, resolve_class, select_class_rows
from atlas.store.activations import ActivationsFile
from atlas.store.layout import read_layout

SMALL = SubAtlasSettings(sizes=(2, 3), min_count=1, class_top_n=40, icon_size=64, steps=2, batch_size=8)


@pytest.fixture(scope="module")
def run(tiny_run: Path, tmp_path_factory) -> Path:
    """A private copy of the tiny run (the shared one must not gain sub-atlases)."""
    dest = tmp_path_factory.mktemp("sub") / "run"
    shutil.copytree(tiny_run, dest)
    return dest


@pytest.fixture(scope="module")
def model():
    return load_model("inceptionv1", random_init=True, device="cpu")


@pytest.fixture(scope="module")
def two_classes(run: Path) -> tuple[int, int]:
    """The two classes listed in the most rows' top-k attribution."""
    with ActivationsFile(run / "activations.h5") as f:
        top = f.read(None, "attribution/top_classes")
    (a, na), (b, nb) = Counter(top.ravel().tolist()).most_common(2)
    assert nb >= 3
    return int(a), int(b)


def test_slug_and_folders(tmp_path: Path) -> None:
    assert slug("English springer") == "english-springer"
    assert slug("n01440764") == "n01440764"
    assert class_folder(tmp_path, "tench") == tmp_path / "classes" / "tench"
    assert compare_folder(tmp_path, "snorkel", "scuba diver") == tmp_path / "compare" / "snorkel--scuba-diver"
    with pytest.raises(ValueError, match="empty folder name"):
        slug("!!")
    with pytest.raises(ValueError, match="pair of classes"):
        SubAtlasSettings(compare=(("a",),))


def test_class_atlas_holds_the_class_rows_and_skips_when_current(run: Path, model, two_classes) -> None:
    a, _ = two_classes
    s = class_atlas(run, str(a), model, SMALL, device="cpu", progress=False)
    folder = class_folder(run, model.class_names[a])
    assert s.folder == folder and not s.up_to_date and s.icons > 0
    lay = read_layout(folder / "layout.h5")
    with ActivationsFile(run / "activations.h5") as f:
        expected = select_class_rows(f, "inception4c", a, SMALL.class_top_n)
    np.testing.assert_array_equal(np.sort(lay.row_ids), expected)
    manifest = (folder / "tiles" / "manifest.json").read_text()
    assert "Class atlas" in manifest
    again = class_atlas(run, str(a), model, SMALL, device="cpu", progress=False)
    assert again.up_to_date and "nothing to do" in again.describe()


def test_comparison_atlas_puts_rows_by_attribution_difference(run: Path, model, two_classes) -> None:
    a, b = two_classes
    s = comparison_atlas(run, str(a), str(b), model, SMALL, device="cpu", progress=False)
    lay = read_layout(s.folder / "layout.h5")
    with h5py.File(run / "activations.h5", "r") as f:
        g = f["layers/inception4c/attribution"]
        tc, tv = g["top_classes"][:][lay.row_ids], g["top_values"][:][lay.row_ids]
    d = class_attribution(tc, tv, a) - class_attribution(tc, tv, b)
    ok = lay.valid
    # x is a monotone function of the attribution difference: right = more class A
    order = np.argsort(d[ok], kind="stable")
    assert (np.diff(lay.xy[ok, 0][order]) >= -1e-6).all()
    x = lay.xy[ok, 0]
    assert (d[ok] > 0).any()
    assert x[d[ok] > 0].min() > 0.5
    if (d[ok] < 0).any():
        assert x[d[ok] < 0].max() < 0.5
    assert comparison_atlas(run, str(a), str(b), model, SMALL, device="cpu", progress=False).up_to_date


def test_served_atlas_list_names_the_sub_atlases(run: Path, model, two_classes) -> None:
    from atlas.web.serve import find_runs

    a, b = two_classes
    class_atlas(run, str(a), model, SMALL, device="cpu", progress=False)
    comparison_atlas(run, str(a), str(b), model, SMALL, device="cpu", progress=False)
    runs = find_runs(run)
    na, nb = slug(model.class_names[a]), slug(model.class_names[b])
    assert {f"classes/{na}/tiles", f"compare/{na}--{nb}/tiles"} <= set(runs)


def test_cli_and_pipeline_build_class_atlases(run: Path, two_classes, tmp_path: Path, capsys) -> None:
    from atlas.cli import main
    from atlas.pipeline import run_pipeline

    _, b = two_classes
    assert main(["-q", "classes", str(run), str(b), "--random-init", "--device", "cpu", "--sizes", "2",
                 "--min-count", "1", "--steps", "2", "--icon-size", "64", "--class-top-n", "40"]) == 0
    out = capsys.readouterr().out
    name_b = load_model("inceptionv1", random_init=True).class_names[b]
    assert f"classes/{slug(name_b)}" in out and "atlas serve" in out
    assert (class_folder(run, name_b) / "tiles" / "manifest.json").is_file()
    with pytest.raises(ValueError, match="close|not a class|unknown"):
        resolve_class("no such class at all")
    cfg = tmp_path / "classes.toml"
    cfg.write_text(f"""
[run]
dir = "{run}"
device = "cpu"
[model]
name = "inceptionv1"
random_init = true
[collect]
source = "{run.parent / 'photos'}"
[classes]
names = ["{b}"]
sizes = [2]
min_count = 1
steps = 2
icon_size = 64
class_top_n = 40
""")
    summary = run_pipeline(cfg, only="classes", progress=False)["classes"]
    assert "nothing to do" in summary


@pytest.mark.browser
def test_viewer_switches_to_a_class_atlas_and_a_comparison(run: Path, model, two_classes, tmp_path: Path) -> None:
    from atlas.web.serve import make_server
    from browserkit import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _require_browser

    a, b = two_classes
    class_atlas(run, str(a), model, SMALL, device="cpu", progress=False)
    comparison_atlas(run, str(a), str(b), model, SMALL, device="cpu", progress=False)
    sync_playwright = _require_browser()
    server = make_server(run, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(base)
            page.wait_for_selector("body[data-ready='1']", timeout=20_000)
            options = page.eval_on_selector_all("#run-select option", "els => els.map(e => e.value)")
            target = f"classes/{slug(model.class_names[a])}/tiles"
            assert target in options and len(options) >= 2
            assert page.is_visible("#run-select")
            page.select_option("#run-select", target)
            page.wait_for_function(f"() => location.hash.includes({target!r}) || "
                                   f"document.querySelector('#run-select').value === {target!r}")
            page.wait_for_timeout(1500)
            assert any(f"/data/{target}/" in u for u in requests), "no tile of the class atlas was requested"
            pair = f"compare/{slug(model.class_names[a])}--{slug(model.class_names[b])}/tiles"
            assert pair in options
            page.select_option("#run-select", pair)
            page.wait_for_function(f"() => document.querySelector('#run-select').value === {pair!r}")
            page.wait_for_timeout(1500)
            assert any(f"/data/{pair}/" in u for u in requests), "no tile of the comparison atlas was requested"
            label = page.eval_on_selector("#run-select", "s => s.options[s.selectedIndex].textContent")
            assert "compare" in label
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


def test_the_run_s_own_atlas_is_listed_before_its_class_atlases(run: Path, model, two_classes) -> None:
    """The viewer opens the first atlas of /api/runs: serving a run shows its main atlas, not a class atlas."""
    import json
    import urllib.request

    from atlas.web.serve import make_server

    a, _ = two_classes
    class_atlas(run, str(a), model, SMALL, device="cpu", progress=False)
    server = make_server(run, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/runs"
        ids = [r["id"] for r in json.loads(urllib.request.urlopen(url, timeout=10).read())["runs"]]
    finally:
        server.shutdown()
        server.server_close()
    assert ids[0] == "tiles" and any(i.startswith("classes/") for i in ids[1:])


def test_a_class_too_small_for_its_grid_still_gives_an_atlas(run: Path, model, two_classes) -> None:
    """Levels that keep no cell (too few rows for min_count) are rendered and tiled as empty."""
    from atlas.store.icons import read_icons

    a, _ = two_classes
    empty = SubAtlasSettings(sizes=(2, 3), min_count=10**6, class_top_n=40, icon_size=64, steps=2, batch_size=8)
    # overwrite: the class atlas that earlier tests built in the shared run has other settings
    s = class_atlas(run, str(a), model, empty, device="cpu", progress=False, overwrite=True)
    assert s.icons == 0
    assert all(len(level.cell_id) == 0 for level in read_icons(s.folder / "icons.h5").values())
    assert (s.folder / "tiles" / "manifest.json").is_file()
