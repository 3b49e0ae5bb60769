"""Multi-layer runs: one collect pass, then reduce, grid, render and tiles per layer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

import atlas.stages.render as render_pkg
from atlas.checks import SettingError
from atlas.config import load_config
from atlas.pipeline import layer_folders, run_pipeline
from atlas.stages.collect import CollectSettings
from atlas.stages.collect.rows import shared_positions
from atlas.store.activations import ActivationsFile
from atlas.store.runs import require_atlas_files, run_file
from tinyrun import make_config

LAYERS = ("inception4e", "inception5b")


def test_shared_positions_are_the_same_places_in_every_grid():
    settings = CollectSettings(layers=("a", "b", "c"), sampling="shared", positions_per_image=5, edge_margin=1)
    fine, same, coarse = shared_positions(7, [(28, 28), (14, 14), (7, 7)], settings)
    again = shared_positions(7, [(7, 7), (14, 14)], settings)
    np.testing.assert_array_equal(coarse, again[0])  # drawn on the coarsest grid, whatever the order
    np.testing.assert_array_equal(same, again[1])
    assert len({tuple(p) for p in coarse}) == 5 and (coarse >= 1).all() and (coarse <= 5).all()
    # the finer cell holds the coarse cell's centre: (y + 0.5) / 7 of the photo's height
    np.testing.assert_array_equal(same, np.floor((coarse + 0.5) * 2))
    np.testing.assert_array_equal(fine, np.floor((coarse + 0.5) * 4))
    centre = (coarse + 0.5) / 7
    assert (np.abs((fine + 0.5) / 28 - centre) <= 0.5 / 28 + 1e-9).all()
    other = shared_positions(8, [(7, 7)], settings)[0]
    assert not np.array_equal(other, coarse)  # another photo, other places


def test_multilayer_run_builds_every_layer_then_skips_everything(tmp_path):
    cfg_path = make_config(tmp_path, 12, layers=LAYERS, sampling="shared",
                           collect_extra="attribution_classes = 3")
    cfg = load_config(cfg_path)
    run = tmp_path / "run"
    assert layer_folders(cfg) == [(name, run / "layers" / name) for name in LAYERS]
    collected = run_pipeline(cfg, only="collect", progress=False)["collect"]
    with ActivationsFile(run / "activations.h5") as f:  # a class both layers' rows are attributed to
        tops = [Counter(np.asarray(f.read_rows(name, "attribution/top_classes", np.arange(36))).ravel().tolist())
                for name in LAYERS]
    cls = max(tops[0], key=lambda c: (min(tops[0][c], tops[1][c]), -c))
    assert min(tops[0][cls], tops[1][cls]) >= 3, (tops[0].most_common(3), tops[1].most_common(3))
    cfg_path.write_text(cfg_path.read_text() + f'[classes]\nnames = ["{cls}"]\nsizes = [2]\nsteps = 2\n')
    cfg = load_config(cfg_path)
    first = {"collect": collected, **run_pipeline(cfg, start="reduce", progress=False)}
    with ActivationsFile(run / "activations.h5") as f:
        assert f.layers == list(LAYERS)
        assert [f.n_rows(name) for name in LAYERS] == [36, 36]  # 12 photos x 3 shared places
        pos = {name: np.asarray(f.read_rows(name, "position", np.arange(36))) for name in LAYERS}
        images = [np.asarray(f.read_rows(name, "image_index", np.arange(36))) for name in LAYERS]
    np.testing.assert_array_equal(images[0], images[1])
    np.testing.assert_array_equal(pos["inception4e"], np.floor((pos["inception5b"] + 0.5) * 2))
    for name in LAYERS:
        folder = run / "layers" / name
        for artifact in ("layout.h5", "cells.h5", "icons.h5", "tiles/manifest.json"):
            assert (folder / artifact).is_file(), (name, artifact)
        manifest = json.loads((folder / "tiles" / "manifest.json").read_text())
        assert manifest["layer"] == name and manifest["layer_set"] == list(LAYERS)
        (class_tiles,) = (folder / "classes").glob("*/tiles/manifest.json")
        classes = json.loads(class_tiles.read_text())
        assert classes["layer"] == name and name in classes["title"]
        assert f"[{name}]" in first["reduce"] and f"[{name}]" in first["render"]
    assert not (run / "layout.h5").exists() and not (run / "tiles").exists()
    # the tools take one layer's folder, and say so when given the run itself
    assert run_file(run / "layers" / LAYERS[0], "activations.h5") == run / "activations.h5"
    assert run_file(run, "activations.h5") == run / "activations.h5"
    with pytest.raises(ValueError, match="multi-layer run: give one layer's atlas folder") as e:
        require_atlas_files(run, {"layout.h5": "reduce"})
    assert str(run / "layers" / LAYERS[0]) in str(e.value) and ", ".join(LAYERS) in str(e.value)
    typed = subprocess.run([sys.executable, "-m", "atlas", "attack", str(run), "--source", "tench", "--target",
                            "goldfish", "--random-init", "--device", "cpu"], capture_output=True, text=True)
    assert typed.returncode != 0 and "multi-layer run" in typed.stderr and "Traceback" not in typed.stderr
    second = run_pipeline(cfg, progress=False)
    assert "nothing to do" in second["collect"]
    for stage in ("reduce", "grid", "render"):
        lines = second[stage].splitlines()
        assert len(lines) == len(LAYERS)
        assert all(any(w in line for w in ("up to date", "nothing to do", "current")) for line in lines), lines


def test_a_run_killed_in_one_layer_keeps_the_layers_before_it(tmp_path, monkeypatch):
    cfg = load_config(make_config(tmp_path, 4, layers=LAYERS, sampling="shared"))
    for stage in ("collect", "reduce", "grid"):
        run_pipeline(cfg, only=stage, progress=False)
    real = render_pkg.render_cells
    calls = []

    def killed_on_the_second_layer(cells, icons, *args, **kwargs):
        calls.append(cells)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cells, icons, *args, **kwargs)

    monkeypatch.setattr(render_pkg, "render_cells", killed_on_the_second_layer)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, start="render", progress=False)
    first_icons = tmp_path / "run" / "layers" / LAYERS[0] / "icons.h5"
    stamp = first_icons.stat().st_mtime_ns
    assert not (tmp_path / "run" / "layers" / LAYERS[1] / "icons.h5").exists()
    monkeypatch.setattr(render_pkg, "render_cells", real)
    again = run_pipeline(cfg, start="render", progress=False)
    lines = again["render"].splitlines()
    assert any(w in lines[0] for w in ("up to date", "nothing to do")), lines[0]
    assert "rendered" in lines[1], lines[1]
    assert first_icons.stat().st_mtime_ns == stamp  # the finished layer was not touched
    assert (tmp_path / "run" / "layers" / LAYERS[1] / "tiles" / "manifest.json").is_file()


def test_collect_cli_takes_shared_sampling(tmp_path, atlas_cli):
    cfg = load_config(make_config(tmp_path, 2))
    out = tmp_path / "acts.h5"
    code, stdout, err = atlas_cli("collect", cfg.collect.source, "-o", str(out), "--random-init", "--device", "cpu",
                                  "--layer", "inception4a", "--layer", "inception5b", "--sampling", "shared",
                                  "--positions", "2", "--workers", "0", "--no-attribution")
    assert code == 0, err
    with ActivationsFile(out) as f:
        a, b = (np.asarray(f.read_rows(name, "position", np.arange(4))) for name in ("inception4a", "inception5b"))
    np.testing.assert_array_equal(a, np.floor((b + 0.5) * 2))


def test_every_layer_attributed_from_one_pass_equals_one_pass_per_layer():
    import torch

    from atlas.models import load_model
    from atlas.stages.collect.rows import layer_attributions, position_attribution

    model = load_model("inceptionv1", random_init=True, device="cpu")
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([[3, 7, 500], [1, 999, 42]])
    layers = ["inception4e", "inception3b", "inception5b"]  # any order: the lowest one is the leaf
    together = layer_attributions(model, images, layers, lambda logits: classes)
    assert list(together) == layers
    for name in layers:
        h, cls, attr = together[name]
        h1, cls1, attr1 = position_attribution(model, images, name, classes)
        torch.testing.assert_close(h, h1)
        torch.testing.assert_close(cls, cls1)
        torch.testing.assert_close(attr, attr1, rtol=1e-4, atol=1e-6 * float(attr1.abs().max()))
        assert attr.shape == (2, 3, *h.shape[2:]) and float(attr.abs().max()) > 0


def test_one_layer_collected_later_at_the_run_s_shared_places(tmp_path):
    """An aligned atlas's side of another model collects one layer of a multi-layer run: at the
    places the run drew on its coarsest grid (shared_grid), so its rows line up with the run's."""
    from atlas.stages.aligned.sides import run_model
    from atlas.stages.collect import collect

    cfg = load_config(make_config(tmp_path, 4, layers=LAYERS, sampling="shared"))
    run_pipeline(cfg, only="collect", progress=False)
    acts = tmp_path / "run" / "activations.h5"
    settings = run_model(acts).collect_settings("inception4e")
    assert settings.layers == ("inception4e",) and settings.shared_grid == (7, 7)  # inception5b's grid
    collect(cfg.collect.source, tmp_path / "side.h5", "inceptionv1", settings, random_init=True, device="cpu",
            batch_size=4, workers=0, progress=False)
    with ActivationsFile(acts) as run, ActivationsFile(tmp_path / "side.h5") as side:
        n = run.n_rows("inception4e")
        assert side.n_rows("inception4e") == n == 12
        for field in ("position", "image_index"):
            np.testing.assert_array_equal(side.read_rows("inception4e", field, np.arange(n)),
                                          run.read_rows("inception4e", field, np.arange(n)))
    alone = CollectSettings(layers=("inception4e",), sampling="shared", positions_per_image=3)
    assert not np.array_equal(shared_positions(0, [(14, 14)], alone)[0],
                              shared_positions(0, [(14, 14)], settings)[0])  # drawn on its own grid otherwise
    with pytest.raises(SettingError, match="shared_grid"):
        CollectSettings(shared_grid=(7,))
