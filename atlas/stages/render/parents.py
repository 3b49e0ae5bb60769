"""Starting a finer level's icons from their parent cells' icons (``start="parent"``): which cell is
a cell's parent, which levels a render then needs, and the batches that start from the parents."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from atlas.stages.grid import ancestor_rows
from atlas.stages.render.batch import IconBatch
from atlas.store.cells import CellLevel
from atlas.store.icons import read_icons

log = logging.getLogger(__name__)


def parent_rows(child: CellLevel, parent: CellLevel, chunk: int = 4096) -> np.ndarray:
    """For each cell of ``child`` (a finer level), the row of its parent cell in ``parent``, (M,) int64.

    The parent is the ``parent`` cell that contains the child cell's center (with grid sizes that
    double, cell ``(iy, ix)``'s parent is ``(iy // 2, ix // 2)``). Where that cell was not kept
    (fewer rows than the level's ``min_count``), the parent is the kept cell whose direction has
    the highest cosine to the child's.
    """
    if not len(parent):
        raise ValueError(f"grid {parent.size} kept no cell, so the cells of grid {child.size} have no parent")
    rows = ancestor_rows(child.coords, child.size, parent.cell_id, parent.size)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        p = parent.direction.astype(np.float32)
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            rows[part] = np.argmax(child.direction[part].astype(np.float32) @ p.T, axis=1)
    return rows


def levels_with_parents(sizes: Sequence[int], wanted: Sequence[int], start: str) -> tuple[list[int], dict[int, int]]:
    """The levels to render, coarse to fine, and each level's parent level.

    ``sizes`` are the grid sizes of the file, ``wanted`` those asked for. With ``start="parent"``
    a level's parent is the next coarser level of the file, and the coarser levels the wanted ones
    start from are rendered too; with ``"cold"`` no level has a parent.
    """
    sizes, wanted = sorted(sizes), sorted(wanted)
    parent_of = dict(zip(sizes[1:], sizes)) if start == "parent" else {}
    if parent_of and wanted:
        coarser = [s for s in sizes if s < wanted[-1] and s not in wanted]
        if coarser:
            log.info("the %s icons start from their parents': rendering the coarser levels %s too",
                     ", ".join(f"{s}x{s}" for s in wanted), ", ".join(f"{s}x{s}" for s in coarser))
            wanted = sorted(wanted + coarser)
    return wanted, parent_of


def start_from_parents(batches: list[IconBatch], icons_path: str | os.PathLike, child: CellLevel,
                       parent: CellLevel, *, steps: int, lr: float) -> list[IconBatch]:
    """``batches`` of the level ``child``, each cell starting from its parent cell's icon as stored
    in ``icons_path`` (the level ``parent``, rendered by now) with ``steps`` steps at ``lr``, and
    without the redirected ReLU gradient of a start from noise (an icon has no dead units to
    revive)."""
    if not batches:
        return batches
    above = read_icons(icons_path, [parent.size])[parent.size]
    if not above.done.all():
        raise RuntimeError(f"grid {parent.size} of {icons_path} is not fully rendered, so grid {child.size} cannot "
                           "start from it; render again")
    up = parent_rows(child, parent)
    return [dataclasses.replace(b, init=above.icons[up[b.rows]], steps=steps, lr=lr, redirect_relu_steps=0)
            for b in batches]
