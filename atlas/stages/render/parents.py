"""Starting a finer level's icons from their parent cells' icons (``start="parent"``): which
cell is a cell's parent, and which levels a render then needs."""

from __future__ import annotations

import numpy as np

from atlas.stages.grid import ancestor_rows
from atlas.store.cells import CellLevel


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
