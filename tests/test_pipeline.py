"""`atlas run CONFIG`: stages in order into one run directory, skipped when current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from atlas.pipeline import run_pipeline
from atlas.store.activations import ActivationsFile


def make_config(tmp_path: Path, n_photos: int = 12) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_photos):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
device = "cpu"
[model]
name = "inceptionv1"
random_init = true
[collect]
source = "{photos}"
layers = ["inception4c"]
positions_per_image = 3
batch_size = 4
workers = 0
[reduce]
n_neighbors = 5
[grid]
sizes = [2, 4]
min_count = 1
[render]
steps = 3
icon_size = 64
batch_size = 8
[tiles]
tile_size = 128
""")
    return cfg


def test_run_all_stages_then_skip_when_current(tmp_path):
    cfg = make_config(tmp_path)
    first = run_pipeline(cfg, progress=False)
    assert list(first) == ["collect", "reduce", "grid", "render", "tiles"]
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
