"""Step 1 of the attack: the class-comparison atlas. Every position of views of photos of the
source and target classes, with its attribution to both (:func:`comparison_rows`), placed on the
atlas and binned into its cells; the cells that push toward the target more than toward the
source are the candidate neighbourhoods (:func:`comparison_cells`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.resources import imagenet_class_names
from atlas.store.runs import require_atlas_files


@dataclass
class Candidate:
    """One atlas cell as a patch source. ``score`` = ``target_attribution - source_attribution``
    (means over the cell's rows); ``classes``: the cell's top classes by the atlas's attribution."""

    size: int
    iy: int
    ix: int
    score: float
    target_attribution: float
    source_attribution: float
    count: int
    classes: list[str]
    direction: np.ndarray = field(repr=False)
    icon: np.ndarray | None = field(default=None, repr=False)
    example_row: int = -1  # the comparison row of the cell that pushes most toward the target

    @property
    def name(self) -> str:
        return f"cell {self.size}:{self.iy},{self.ix}"

    def describe(self) -> str:
        return (f"{self.name:<14} score {self.score:+.4f} (target {self.target_attribution:+.4f}, source "
                f"{self.source_attribution:+.4f}), {self.count} rows, top classes: {', '.join(self.classes[:3])}")


@dataclass
class ComparisonRows:
    """Every spatial position of a set of photos at ``layer``: the activation vectors ``(M, C)``
    (float16), their attribution to the target and to the source ``(M,)``, their image ``(M,)``,
    their (y, x) position ``(M, 2)`` and the layer's grid ``(H, W)``."""

    acts: np.ndarray
    target_attribution: np.ndarray
    source_attribution: np.ndarray
    image: np.ndarray
    position: np.ndarray | None = None
    grid: tuple[int, int] = (0, 0)

    @property
    def diff(self) -> np.ndarray:
        return self.target_attribution - self.source_attribution


def comparison_rows(model: AtlasModel, layer: str, images: torch.Tensor, source: int, target: int, *,
                    batch_size: int = 16, progress: bool = False) -> ComparisonRows:
    """Activations and per-position attribution ``h . d logit_c / d h`` to ``target`` and
    ``source`` at every position of ``layer`` for ``images`` ``(N, 3, S, S)``: one forward and
    two backward passes (down to the layer) per batch, as collect's candidate classes
    (:func:`atlas.stages.collect.rows.position_attribution`)."""
    from tqdm.auto import tqdm

    from atlas.stages.collect.rows import position_attribution

    acts, ta, sa, img, pos = [], [], [], [], []
    grid = (0, 0)
    for start in tqdm(range(0, len(images), batch_size), desc="comparison rows", unit="batch",
                      disable=not progress, leave=False):
        x = images[start:start + batch_size].to(model.device)
        pair = torch.tensor([[target, source]], device=x.device).expand(len(x), 2)
        h, _, attr = position_attribution(model, x, layer, pair)  # attr: (b, 2, H, W)
        b, c, hh, ww = h.shape
        acts.append(h.permute(0, 2, 3, 1).reshape(-1, c).cpu().numpy().astype(np.float16))
        ta.append(attr[:, 0].reshape(-1).cpu().numpy())
        sa.append(attr[:, 1].reshape(-1).cpu().numpy())
        img.append(np.repeat(np.arange(start, start + b), hh * ww))
        pos.append(np.tile(np.stack(np.divmod(np.arange(hh * ww), ww), 1), (b, 1)).astype(np.int16))
        grid = (hh, ww)
    if not acts:
        raise ValueError("no images to compare")
    return ComparisonRows(np.concatenate(acts), np.concatenate(ta), np.concatenate(sa), np.concatenate(img),
                          np.concatenate(pos), grid)


def grid_level(run_dir: Path, level: int | None) -> tuple[int, Any]:
    """Grid ``level`` of the run's ``cells.h5`` (default: its middle size) and its cells (a
    :class:`~atlas.store.cells.CellLevel`); a clear error for a size the file does not have."""
    from atlas.store.cells import cells_attrs, read_cells

    sizes = [int(v) for v in cells_attrs(run_dir / "cells.h5")["sizes"]]
    level = level or sizes[len(sizes) // 2]
    if level not in sizes:
        raise ValueError(f"{run_dir / 'cells.h5'} has grid sizes {sizes}, not {level}; pick one of them (--level)")
    return level, read_cells(run_dir / "cells.h5", [level])[level]


def cell_class_ids(cells: Any, i: int, n_classes: int) -> list[int]:
    """The top classes of row ``i`` of a grid level by the atlas's attribution, strongest first
    (those with a positive value and an index below ``n_classes``)."""
    return [int(c) for c, v in zip(cells.top_classes[i], cells.top_values[i]) if v > 0 and 0 <= c < n_classes]


def random_cell_rows(cells: Any, taken: set[int], n: int, seed: int) -> list[int]:
    """``n`` rows of a grid level drawn at random (seeded) among the cells whose id is not in
    ``taken``: the random-cell baseline."""
    pool = [i for i, c in enumerate(cells.cell_id) if int(c) not in taken]
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)] if pool else []


def comparison_cells(run_dir: str | os.PathLike, rows: ComparisonRows, *, level: int | None = None, k: int = 4,
                     n_random: int = 4, min_rows: int = 8, seed: int = 0,
                     class_names: Sequence[str] | None = None) -> tuple[list[Candidate], list[Candidate], int]:
    """The class-comparison atlas: ``rows`` (every position of photos of the two classes) placed
    on the atlas in ``run_dir`` with its fitted layout, binned into the cells of grid ``level``
    (default: the middle size of ``cells.h5``) and scored by their mean target-minus-source
    attribution. Returns the ``k`` best cells holding at least ``min_rows`` rows (direction: the
    mean of the cell's rows that push toward the target), ``n_random`` other atlas cells drawn at
    random (direction: the cell's own mean, as in ``cells.h5``) for the baseline, and the level."""
    from atlas.stages.grid import grid_cells
    from atlas.stages.reduce import load_placer, project
    from atlas.store.icons import read_icons

    run_dir = Path(run_dir)
    require_atlas_files(run_dir, {"layout.h5": "reduce", "cells.h5": "grid"})
    level, cells = grid_level(run_dir, level)
    layout_path = run_dir / "layout.h5"
    xy = project(layout_path, rows.acts.astype(np.float32), est=load_placer(layout_path))
    ok = np.isfinite(xy).all(1)
    ids = np.full(len(xy), -1, np.int64)
    ids[ok] = grid_cells(np.clip(xy[ok], 0.0, 1.0), level)
    diff = rows.diff.astype(np.float64)
    uniq, inv, cnt = np.unique(ids[ok], return_inverse=True, return_counts=True)
    mean_diff = np.bincount(inv, weights=diff[ok]) / cnt
    mean_t = np.bincount(inv, weights=rows.target_attribution[ok].astype(np.float64)) / cnt
    mean_s = np.bincount(inv, weights=rows.source_attribution[ok].astype(np.float64)) / cnt
    icons = None
    if (run_dir / "icons.h5").is_file():
        try:
            icons = read_icons(run_dir / "icons.h5", [level])[level]
        except (ValueError, OSError, KeyError):
            icons = None
    icon_row = {} if icons is None else {int(c): j for j, c in enumerate(icons.cell_id)}
    cell_row = {int(c): i for i, c in enumerate(cells.cell_id)}
    names = list(class_names or imagenet_class_names())

    def info(cid: int) -> tuple[list[str], np.ndarray | None]:
        i, j = cell_row.get(cid), icon_row.get(cid)
        classes = [] if i is None else [names[c] for c in cell_class_ids(cells, i, len(names))]
        icon = icons.icons[j] if icons is not None and j is not None and bool(icons.done[j]) else None
        return classes, icon

    acts_ok = rows.acts[ok]
    push = np.bincount(inv, weights=np.maximum(diff[ok], 0.0))  # the cell's total push toward the target
    order = [u for u in np.argsort(-push, kind="stable") if cnt[u] >= min_rows and mean_diff[u] > 0][:k]
    if not order:
        raise ValueError(f"no cell of grid {level} holds {min_rows} or more positions that push toward the target "
                         "more than the source; try a coarser --level, or more photos of the two classes")
    cands = []
    for u in order:
        w = np.where(inv == u, np.maximum(diff[ok], 0.0), 0.0)
        sel = w > 0
        direction = (acts_ok[sel].astype(np.float32) * w[sel, None]).sum(0) / w[sel].sum()
        cid = int(uniq[u])
        classes, icon = info(cid)
        members = np.flatnonzero(ok)[inv == u]
        best = int(members[np.argmax(diff[members])])
        cands.append(Candidate(level, cid // level, cid % level, float(mean_diff[u]), float(mean_t[u]),
                               float(mean_s[u]), int(cnt[u]), classes, direction.astype(np.float32), icon,
                               example_row=best))
    rands = []
    for i in random_cell_rows(cells, {c.iy * level + c.ix for c in cands}, n_random, seed):
        cid = int(cells.cell_id[i])
        classes, icon = info(cid)
        hit = np.flatnonzero(uniq == cid)
        t = float(mean_t[hit[0]]) if len(hit) else 0.0
        s_ = float(mean_s[hit[0]]) if len(hit) else 0.0
        rands.append(Candidate(level, cid // level, cid % level, t - s_, t, s_, int(cells.count[i]), classes,
                               cells.direction[i].astype(np.float32), icon))
    return cands, rands, level
