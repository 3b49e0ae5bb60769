"""Small fake ``cells.h5`` / ``icons.h5`` / ``activations.h5`` (and photos) for tile, server and viewer tests.

The files follow the formats of the grid, render and collect stages, filled with synthetic but
structured content so that a test can predict what every tile must show:

- points: a seeded mixture of Gaussian blobs in the unit square, one ImageNet class per blob;
  each point is one layer row of one image (``position`` in a 7 x 7 layer grid);
- cells: the points binned into ``size x size`` half-open cells for each grid size, with the
  count, the mean point as ``center``, the blob classes ranked by their share as
  ``top_classes``/``top_values`` and the first rows of each cell as examples;
- icons: a flat colour per cell (:func:`icon_color`, unique per level and cell) with a lighter
  ring, so the centre pixel of a drawn icon identifies its cell;
- photos: small JPEGs with a colour gradient, referenced by relative path from ``source``.

Usage::

    run = write_fake_run(tmp_path / "run", sizes=(4, 8, 16), done_fraction=0.5)
    build_tiles(run.cells, run.icons, run.dir / "tiles", activations_path=run.activations)
    mark_done(run.icons, 16, [0, 1, 2])   # render "finished" three more cells
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

LAYER = "mixed4c"
MODEL = "fake-net"
GRID_SHAPE = (7, 7)
#: ImageNet classes given to the blobs (golden retriever, tabby, goldfish, ...).
BLOB_CLASSES = (207, 281, 1, 309, 417, 508, 717, 934, 963, 980, 985, 76)


@dataclass
class FakeRun:
    """Paths and ground truth of a written fake run."""

    dir: Path
    cells: Path
    icons: Path
    activations: Path
    images: Path
    sizes: tuple[int, ...]
    icon_size: int
    done: dict[int, np.ndarray] = field(default_factory=dict)
    cell_ids: dict[int, np.ndarray] = field(default_factory=dict)


def icon_color(size: int, cell_id: np.ndarray | int) -> np.ndarray:
    """The flat RGB colour (uint8, shape ``(..., 3)``) of the icon of ``cell_id`` at grid ``size``.

    Smooth over the grid (hue follows x, brightness y), so the atlas looks like a map, and
    unique per cell for sizes up to 64.
    """
    cell_id = np.asarray(cell_id)
    iy, ix = np.divmod(cell_id, size)
    u = (ix + 0.5) / size
    v = (iy + 0.5) / size
    r = 40 + 200 * u
    g = 40 + 200 * v
    b = 220 - 90 * u - 90 * v + (size % 7) * 4
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def _points(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.uniform(0.12, 0.88, size=(len(BLOB_CLASSES), 2))
    blob = rng.integers(0, len(BLOB_CLASSES), size=n)
    xy = centers[blob] + rng.normal(0, 0.09, size=(n, 2))
    return np.clip(xy, 0.0, np.nextafter(1.0, 0.0)), blob


def _write_images(folder: Path, n: int, rng: np.random.Generator) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for i in range(n):
        w, h = int(rng.integers(90, 140)), int(rng.integers(70, 120))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.integers(0, 255, size=3)
        img = np.stack([(base[0] + 2 * xx) % 256, (base[1] + 2 * yy) % 256, np.full_like(xx, base[2])], -1)
        key = f"class{i % 5}/photo_{i:03d}.jpg"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(folder / key, quality=90)
        keys.append(key)
    return keys


def write_fake_run(
    run_dir: str | Path,
    *,
    sizes: Sequence[int] = (4, 8, 16),
    icon_size: int = 16,
    n_points: int = 1500,
    n_images: int = 30,
    top_k: int = 5,
    examples: int = 6,
    min_count: int = 1,
    done_fraction: float = 1.0,
    channels: int = 8,
    seed: int = 0,
) -> FakeRun:
    """Write ``cells.h5``, ``icons.h5``, ``activations.h5`` and ``images/`` into ``run_dir``.

    ``done_fraction`` of each level's cells (a seeded random subset) are marked rendered.
    """
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    images = run_dir / "images"
    keys = _write_images(images, n_images, rng)

    xy, blob = _points(n_points, rng)  # xy[:, 0] = x, xy[:, 1] = y
    image_index = np.sort(rng.integers(0, n_images, size=n_points)).astype(np.int64)
    position = rng.integers(1, GRID_SHAPE[0] - 1, size=(n_points, 2)).astype(np.int16)

    acts = run_dir / "activations.h5"
    with h5py.File(acts, "w") as f:
        settings = {"layers": [LAYER], "image_transform": "ImageTransform(resize=73, crop=64, keep_aspect=True)"}
        f.attrs.update(atlas_version="0.1.0", kind="activations", model=MODEL, layers=[LAYER], source=str(images),
                       n_images=n_images, n_skipped=0, top_k=top_k, settings_json=json.dumps(settings),
                       settings_hash="fakeacts", complete=True)
        f.create_dataset("images/key", data=np.array(keys, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("images/label", data=np.full(n_images, -1, np.int32))
        g = f.create_group(f"layers/{LAYER}")
        g.attrs.update(n_rows=n_points, channels=channels, grid_shape=GRID_SHAPE, sampling="random")
        g.create_dataset("activations", data=rng.normal(size=(n_points, channels)).astype(np.float16))
        g.create_dataset("image_index", data=image_index)
        g.create_dataset("position", data=position)

    run = FakeRun(run_dir, run_dir / "cells.h5", run_dir / "icons.h5", acts, images, tuple(sizes), icon_size)
    n_classes = len(BLOB_CLASSES)
    with h5py.File(run.cells, "w") as fc, h5py.File(run.icons, "w") as fi:
        fc.attrs.update(atlas_version="0.1.0", kind="cells", model=MODEL, layer=LAYER, settings_hash="fakecells",
                        settings_json=json.dumps({"sizes": list(sizes)}), complete=True, sizes=list(sizes))
        fi.attrs.update(atlas_version="0.1.0", kind="icons", icon_size=icon_size, complete=done_fraction >= 1.0,
                        settings_hash="fakeicons", model=MODEL, layer=LAYER)
        for size in sizes:
            ixy = np.minimum((xy * size).astype(np.int64), size - 1)
            ids_all = ixy[:, 1] * size + ixy[:, 0]
            ids, inverse, counts = np.unique(ids_all, return_inverse=True, return_counts=True)
            keep = counts >= min_count
            m = len(ids)
            center = np.stack([np.bincount(inverse, xy[:, 1], m), np.bincount(inverse, xy[:, 0], m)], 1) / counts[:, None]
            per_class = np.bincount(inverse * n_classes + blob, minlength=m * n_classes).reshape(m, n_classes)
            order = np.argsort(-per_class, axis=1, kind="stable")[:, :top_k]
            top_values = np.take_along_axis(per_class, order, 1) / counts[:, None] * 2.0
            top_classes = np.asarray(BLOB_CLASSES)[order]
            rows_by_cell = np.argsort(inverse, kind="stable")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            take = np.arange(examples)[None, :]
            idx = starts[:, None] + take
            valid = take < counts[:, None]
            ex_rows = np.where(valid, rows_by_cell[np.minimum(idx, n_points - 1)], -1)
            ex_imgs = np.where(valid, image_index[np.maximum(ex_rows, 0)], -1)

            sel = np.flatnonzero(keep)
            cell_id = ids[sel].astype(np.int32)
            g = fc.create_group(f"levels/{size}")
            g.attrs.update(size=size, min_count=min_count)
            g.create_dataset("cell_id", data=cell_id)
            g.create_dataset("coords", data=np.stack(np.divmod(cell_id, size), 1).astype(np.int32))
            g.create_dataset("center", data=center[sel].astype(np.float32))
            g.create_dataset("count", data=counts[sel].astype(np.int32))
            g.create_dataset("direction", data=rng.normal(size=(len(sel), channels)).astype(np.float32))
            g.create_dataset("top_classes", data=top_classes[sel].astype(np.int16))
            g.create_dataset("top_values", data=top_values[sel].astype(np.float32))
            g.create_dataset("example_rows", data=ex_rows[sel].astype(np.int64))
            g.create_dataset("example_images", data=ex_imgs[sel].astype(np.int64))

            icons = fake_icons(size, cell_id, icon_size)
            done = rng.random(len(sel)) < done_fraction if done_fraction < 1.0 else np.ones(len(sel), bool)
            icons[~done] = 0  # not rendered yet: whatever is there must not be drawn
            gi = fi.create_group(f"levels/{size}")
            gi.create_dataset("icons", data=icons, chunks=(min(64, len(sel)), icon_size, icon_size, 3))
            gi.create_dataset("done", data=done)
            run.done[size] = done
            run.cell_ids[size] = cell_id
    return run


def fake_icons(size: int, cell_id: np.ndarray, icon_size: int) -> np.ndarray:
    """(M, S, S, 3) uint8 icons: the cell's :func:`icon_color`, with a lighter ring near the border."""
    colors = icon_color(size, cell_id)
    icons = np.broadcast_to(colors[:, None, None, :], (len(cell_id), icon_size, icon_size, 3)).copy()
    yy, xx = np.mgrid[0:icon_size, 0:icon_size]
    r = np.hypot(yy + 0.5 - icon_size / 2, xx + 0.5 - icon_size / 2) / (icon_size / 2)
    ring = (r > 0.62) & (r < 0.82)
    icons[:, ring] = (icons[:, ring].astype(np.int16) // 2 + 120).clip(0, 255).astype(np.uint8)
    return icons


def mark_done(icons_path: str | Path, size: int, rows: Iterable[int], icon_size: int | None = None) -> None:
    """Pretend render finished ``rows`` of level ``size``: write their icons and set ``done``."""
    rows = np.asarray(sorted(set(int(r) for r in rows)), dtype=np.int64)
    with h5py.File(icons_path, "r+") as f:
        g = f[f"levels/{size}"]
        s = icon_size or int(f.attrs["icon_size"])
        cells_path = Path(icons_path).with_name("cells.h5")
        with h5py.File(cells_path, "r") as fc:
            cell_id = fc[f"levels/{size}/cell_id"][:][rows]
        for r, icon in zip(rows, fake_icons(size, cell_id, s)):
            g["icons"][r] = icon
        done = g["done"][:]
        done[rows] = True
        g["done"][:] = done
        f.attrs["complete"] = bool(all(f[f"levels/{k}/done"][:].all() for k in f["levels"]))
