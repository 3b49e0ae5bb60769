"""A tiny but complete atlas run: random-init InceptionV1 on a few noise photos, every stage.

``make_config(tmp)`` writes the photos and a TOML config whose run folder is ``tmp/run``;
``atlas.pipeline.run_pipeline(config)`` then builds activations, layout, cells, icons and tiles
in about a minute on two cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_config(tmp_path: Path, n_photos: int = 12, layers: tuple[str, ...] = ("inception4c",),
                sampling: str = "random", extra: str = "", collect_extra: str = "") -> Path:
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
layers = [{", ".join(f'"{name}"' for name in layers)}]
sampling = "{sampling}"
positions_per_image = 3
batch_size = 4
workers = 0
{collect_extra}
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
{extra}""")
    return cfg
