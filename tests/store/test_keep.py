"""Nothing lost, nothing injected: a stage whose settings differ from those of its finished
artifact stops (naming the changes) instead of replacing it, render adds levels to icons.h5
instead of wiping it, and an artifact made from inputs that changed since is never "current".

Every test works on a private copy of the session's tiny run (``tiny_run`` in conftest.py).
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from atlas.cli import main
from atlas.store.common import SettingsChangedError, StaleInputError

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "inception4c"


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run, with its config beside it (the photos stay where they are:
    their folder is one of the collect settings)."""
    shutil.copytree(tiny_run, tmp_path / "run")
    text = (tiny_run.parent / "tiny.toml").read_text().replace(str(tiny_run), str(tmp_path / "run"))
    (tmp_path / "tiny.toml").write_text(text)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def model():
    from atlas.models import load_model

    return load_model("inceptionv1", random_init=True, device="cpu")


def config_for(run: Path, **changes: str) -> Path:
    """The run's config with ``changes`` = {"section.key": "toml value"} (a new file beside it)."""
    body = (run.parent / "tiny.toml").read_text()
    for key, value in changes.items():
        section, name = key.split(".")
        pattern = re.compile(rf"(\[{section}\]\n(?:[^\[].*\n)*?){name} = .*\n")
        if pattern.search(body):
            body = pattern.sub(rf"\g<1>{name} = {value}\n", body, count=1)
        else:
            body = body.replace(f"[{section}]\n", f"[{section}]\n{name} = {value}\n", 1)
    cfg = run.parent / "changed.toml"
    cfg.write_text(body)
    return cfg


def snapshot(run: Path) -> dict[str, str]:
    """A digest of every file of the run folder (what must stay as it is)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def render_args(run: Path, **changes):
    from atlas.config import load_config

    r = load_config(config_for(run)).render
    kw = dict(icon_size=r.icon_size, steps=r.steps, batch_size=r.batch_size, lr=r.lr, device="cpu", progress=False)
    kw.update(changes)
    return kw


# --------------------------------------------------------------------------- one stage at a time


def test_collect_with_another_top_k_stops_and_keeps_the_file(run: Path, capsys) -> None:
    from atlas.config import load_config

    before = snapshot(run)
    photos = load_config(run.parent / "tiny.toml").collect.source
    rc = main(["-q", "collect", photos, "-o", str(run / "activations.h5"),
               "--random-init", "--device", "cpu", "--layer", LAYER, "--positions", "3", "--workers", "0",
               "--top-k", "3"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "collect.top_k: 10 -> 3" in err and "--overwrite" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_reduce_with_another_setting_stops_and_keeps_layout_and_model(run: Path, capsys) -> None:
    from atlas.stages.reduce import ReduceSettings, reduce_file

    before = snapshot(run)
    with pytest.raises(SettingsChangedError) as e:
        reduce_file(run / "activations.h5", run / "layout.h5", ReduceSettings(n_neighbors=7), progress=False)
    assert isinstance(e.value, ValueError)
    assert e.value.changes == {"n_neighbors": (5, 7)}
    rc = main(["-q", "reduce", str(run), "--n-neighbors", "7"])
    err = capsys.readouterr().err
    assert rc != 0 and "n_neighbors: 5 -> 7" in err and "--overwrite" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_grid_with_another_setting_stops_and_keeps_the_cells(run: Path) -> None:
    from atlas.stages.grid import grid_file

    before = snapshot(run)
    with pytest.raises(SettingsChangedError) as e:
        grid_file(run / "activations.h5", run / "layout.h5", run / "cells.h5", sizes=(2, 4), min_count=2,
                  progress=False)
    assert e.value.changes == {"min_count": (1, 2)}
    assert snapshot(run) == before


def test_render_with_other_steps_stops_and_keeps_every_icon(run: Path, model, capsys) -> None:
    from atlas.stages.render import render_cells

    before = snapshot(run)
    with pytest.raises(SettingsChangedError) as e:
        render_cells(run / "cells.h5", run / "icons.h5", model, **render_args(run, steps=5))
    assert e.value.changes == {"steps": (3, 5)}
    with pytest.raises(SettingsChangedError):  # a --levels subset is no way around it
        render_cells(run / "cells.h5", run / "icons.h5", model, levels=[2], **render_args(run, steps=5))
    rc = main(["-q", "render", str(run), "--random-init", "--device", "cpu", "--icon-size", "64", "--steps", "5",
               "--batch-size", "8"])
    err = capsys.readouterr().err
    assert rc != 0 and "steps: 3 -> 5" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_render_adds_a_new_grid_level_and_keeps_the_old_icons(run: Path, model) -> None:
    from atlas.stages.grid import grid_file
    from atlas.stages.render import render_cells
    from atlas.store.icons import read_icons

    old = read_icons(run / "icons.h5")
    assert all(lv.done.all() for lv in old.values())
    # the grid gains a level (asked for: --overwrite); the old levels' cells stay the same
    grid_file(run / "activations.h5", run / "layout.h5", run / "cells.h5", sizes=(2, 4, 8), min_count=1,
              progress=False, overwrite=True)
    only_new = render_cells(run / "cells.h5", run / "icons.h5", model, levels=[8], **render_args(run))
    assert only_new.rendered[8] > 0 and only_new.complete
    new = read_icons(run / "icons.h5")
    for size in (2, 4):
        np.testing.assert_array_equal(new[size].icons, old[size].icons)
        assert new[size].done.all()
    again = render_cells(run / "cells.h5", run / "icons.h5", model, **render_args(run))
    assert again.up_to_date and sum(again.rendered.values()) == 0


def test_tiles_with_another_tile_size_stop_and_keep_the_pyramid(run: Path, capsys) -> None:
    from atlas.stages.tiles import build_tiles

    before = snapshot(run)
    with pytest.raises(SettingsChangedError) as e:
        build_tiles(run / "cells.h5", run / "icons.h5", run / "tiles", activations_path=run / "activations.h5",
                    tile_size=64, progress=False)
    assert e.value.changes == {"tile_size": (128, 64)}
    rc = main(["-q", "tiles", str(run), "--tile-size", "64"])
    err = capsys.readouterr().err
    assert rc != 0 and "tile_size: 128 -> 64" in err and "Traceback" not in err
    assert snapshot(run) == before
    done = build_tiles(run / "cells.h5", run / "icons.h5", run / "tiles", activations_path=run / "activations.h5",
                       tile_size=64, progress=False, overwrite=True)
    assert done.tiles_written == done.tiles_total


# --------------------------------------------------------------------------- atlas run


def test_run_with_one_changed_key_stops_before_redoing_anything(run: Path, capsys) -> None:
    from atlas.pipeline import run_pipeline

    before = snapshot(run)
    cfg = config_for(run, **{"reduce.n_neighbors": "7"})
    with pytest.raises(SettingsChangedError) as e:
        run_pipeline(cfg, progress=False)
    assert e.value.stage == "reduce" and e.value.changes == {"n_neighbors": (5, 7)}
    assert "--overwrite" in str(e.value) and "[run] dir" in str(e.value)
    rc = main(["-q", "run", str(cfg)])
    err = capsys.readouterr().err
    assert rc != 0 and "n_neighbors: 5 -> 7" in err and "Traceback" not in err
    assert snapshot(run) == before
    # asked for: the reduce is replaced and every later stage follows it
    done = run_pipeline(cfg, progress=False, overwrite=True)
    assert "laid out" in done["reduce"] and "binned" in done["grid"]
    assert snapshot(run)["layout.h5"] != before["layout.h5"]
    again = run_pipeline(cfg, progress=False)
    for stage in ("collect", "reduce", "grid", "render"):
        assert "current" in again[stage], again[stage]


# --------------------------------------------------------------------------- staleness


def test_a_changed_layout_makes_render_and_tiles_stale(run: Path, model) -> None:
    from atlas.stages.reduce import ReduceSettings, reduce_file
    from atlas.stages.render import render_cells
    from atlas.stages.tiles import build_tiles
    from atlas.web.serve.runs import find_runs

    reduce_file(run / "activations.h5", run / "layout.h5", ReduceSettings(n_neighbors=7), progress=False,
                overwrite=True)
    with pytest.raises(StaleInputError, match=r"layout\.h5.*atlas grid"):
        render_cells(run / "cells.h5", run / "icons.h5", model, **render_args(run))
    with pytest.raises(ValueError, match=r"layout\.h5.*atlas grid"):
        build_tiles(run / "cells.h5", run / "icons.h5", run / "tiles", tile_size=128, progress=False)
    served = find_runs(run)
    (only,) = served.values()
    warnings = only.describe()["warnings"]
    assert warnings and any("layout.h5" in w for w in warnings)
    # following the chain down makes every stage current again
    from atlas.stages.grid import grid_file

    assert not grid_file(run / "activations.h5", run / "layout.h5", run / "cells.h5", sizes=(2, 4), min_count=1,
                         progress=False).up_to_date
    rendered = render_cells(run / "cells.h5", run / "icons.h5", model, **render_args(run))
    assert sum(rendered.rendered.values()) > 0 and rendered.complete
    build_tiles(run / "cells.h5", run / "icons.h5", run / "tiles", activations_path=run / "activations.h5",
                tile_size=128, progress=False)
    (only,) = find_runs(run).values()
    assert only.describe()["warnings"] == []


def test_files_of_an_older_version_stay_readable(run: Path, model) -> None:
    """Artifacts without the recorded inputs are "unknown": a warning, not a crash."""
    import h5py

    from atlas.stages.render import render_cells

    for name in ("activations.h5", "layout.h5", "cells.h5", "icons.h5"):
        with h5py.File(run / name, "r+") as f:
            for key in ("inputs_json", "artifact_id"):
                if key in f.attrs:
                    del f.attrs[key]
    again = render_cells(run / "cells.h5", run / "icons.h5", model, **render_args(run))
    assert again.up_to_date
