"""`atlas run CONFIG`: stages in order into one run directory, skipped when current."""

from __future__ import annotations

import subprocess
import sys

from atlas.pipeline import run_pipeline
from atlas.store.activations import ActivationsFile
from tinyrun import make_config


def test_run_all_stages_then_skip_when_current(tmp_path):
    cfg = make_config(tmp_path)
    first = run_pipeline(cfg, progress=False)
    assert list(first) == ["collect", "reduce", "grid", "render", "tiles", "classes", "aligned"]
    assert first["classes"].startswith("no class atlases configured")
    assert first["aligned"].startswith("no aligned atlases configured")
    assert "collected 12 images" in first["collect"]
    run = tmp_path / "run"
    with ActivationsFile(run / "activations.h5") as f:
        assert f.n_rows("inception4c") == 36
    for name in ("layout.h5", "cells.h5", "icons.h5", "tiles/manifest.json"):
        assert (run / name).is_file(), name
    second = run_pipeline(cfg, progress=False)
    assert "nothing to do" in second["collect"]
    for stage in ("reduce", "grid", "render"):
        assert any(w in second[stage] for w in ("up to date", "nothing to do", "current")), second[stage]


def test_cli_run_and_bad_stage_name(tmp_path):
    cfg = make_config(tmp_path, 2)
    ok = subprocess.run([sys.executable, "-m", "atlas", "-q", "run", str(cfg), "--only", "collect"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "[collect] collected 2 images" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "atlas", "run", str(cfg), "--only", "colect"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "'colect' is not a stage" in bad.stderr and "collect" in bad.stderr


def test_only_and_from_together_are_refused_before_anything_runs(tmp_path, atlas_cli):
    cfg = make_config(tmp_path, 2)
    code, out, err = atlas_cli("run", str(cfg), "--only", "collect", "--from", "grid")
    assert code == 2 and "--only" in err and "--from" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not out
