"""The stage's inputs: the grid levels of ``cells.h5`` and the rendered icons of ``icons.h5``
(read in blocks, never held open, so a render in progress can keep writing)."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atlas.stages.grid import ancestor_rows
from atlas.stages.tiles.hashing import PLACEHOLDER_DIGEST, U64, mix64
from atlas.stages.tiles.settings import TilesError
from atlas.store.cells import read_level_arrays
from atlas.store.common import ArtifactError
from atlas.store.icons import read_icon_rows, read_icon_state

log = logging.getLogger("atlas.stages.tiles")


@dataclass
class Level:
    size: int
    min_count: int
    cell_id: np.ndarray  # (M,) int64
    coords: np.ndarray  # (M, 2) int64 (iy, ix)
    center: np.ndarray  # (M, 2) float32 (y, x)
    count: np.ndarray  # (M,) int64
    top_classes: np.ndarray  # (M, k) int64
    top_values: np.ndarray  # (M, k) float32
    example_rows: np.ndarray  # (M, E) int64
    example_images: np.ndarray  # (M, E) int64
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    digest: np.ndarray = field(default_factory=lambda: np.zeros(0, U64))
    # a cell not rendered yet is drawn as the icon of its nearest rendered ancestor (the cell of a
    # coarser level that holds its center), scaled: that level's size (0: none, a placeholder)
    # and row (-1)
    fallback_size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    fallback_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _per_cell(a: np.ndarray, m: int) -> np.ndarray:
    """``(m, k)``: one row per cell, also for a level that kept no cell (``(0, k)``)."""
    a = np.asarray(a)
    if m:
        return a.reshape(m, -1)
    return a.reshape(0, a.shape[-1] if a.ndim > 1 else 0)


#: The datasets of ``cells.h5`` the tiles are drawn from (not the cells' directions).
_CELL_FIELDS = ("cell_id", "coords", "center", "count", "top_classes", "top_values", "example_rows", "example_images")


def read_cells(path: Path) -> tuple[dict[str, Any], list[Level]]:
    try:
        attrs, stored = read_level_arrays(path, _CELL_FIELDS)
    except ArtifactError as e:
        raise TilesError(str(e)) from e
    levels = []
    for lv in stored:
        a, size = lv.arrays, lv.size
        m = len(a["cell_id"])
        level = Level(
            size=size,
            min_count=lv.min_count,
            cell_id=a["cell_id"].astype(np.int64),
            coords=a["coords"].astype(np.int64).reshape(-1, 2),
            center=a["center"].astype(np.float32).reshape(-1, 2),
            count=a["count"].astype(np.int64),
            top_classes=_per_cell(a["top_classes"], m).astype(np.int64),
            top_values=_per_cell(a["top_values"], m).astype(np.float32),
            example_rows=_per_cell(a["example_rows"], m).astype(np.int64),
            example_images=_per_cell(a["example_images"], m).astype(np.int64),
        )
        bad = (level.coords < 0) | (level.coords >= size)
        if bad.any() or np.any(level.cell_id != level.coords[:, 0] * size + level.coords[:, 1]):
            raise TilesError(f"{path} /levels/{size}: coords and cell_id disagree or leave the grid; rerun `atlas grid`")
        levels.append(level)
    if not levels:
        raise TilesError(f"{path} has no grid levels; rerun `atlas grid` with at least one size")
    return attrs, levels


@dataclass(frozen=True)
class IconSource:
    """Where one level's icons live; the file is opened per block read, never held open, so a
    render in progress can keep writing between our reads."""

    path: Path
    size: int  # the grid size of the level
    icon_size: int


def _icon_rows(source: IconSource, start: int, stop: int) -> np.ndarray:
    try:
        return read_icon_rows(source.path, source.size, start, stop)
    except ArtifactError as e:
        raise TilesError(str(e)) from e


class IconRows:
    """Reads icon rows of one level in contiguous blocks, with a small LRU of blocks."""

    def __init__(self, source: IconSource, block: int = 256, keep: int = 8):
        self.source, self.block, self.keep = source, block, keep
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, row: int) -> np.ndarray:
        b = row // self.block
        arr = self._cache.get(b)
        if arr is None:
            arr = _icon_rows(self.source, b * self.block, (b + 1) * self.block)
            self._cache[b] = arr
            if len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return arr[row - b * self.block]


def icon_digests(source: IconSource | None, done: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(M,) uint64: a hash of each rendered icon's pixels; a fixed mark for cells not rendered."""
    out = np.full(len(done), PLACEHOLDER_DIGEST, dtype=U64)
    if source is None:
        return out
    for start in range(0, len(done), chunk):
        rows = np.flatnonzero(done[start:start + chunk])
        if not len(rows):
            continue
        block = _icon_rows(source, start, start + chunk)
        for r in rows:
            d = hashlib.blake2b(block[r].tobytes(), digest_size=8).digest()
            out[start + r] = int.from_bytes(d, "little") | 1  # never equals the placeholder mark
    return out


def fill_fallbacks(levels: list[Level]) -> None:
    """Each level's ``fallback_size`` / ``fallback_row``: for every cell not rendered, its nearest
    rendered ancestor (the nearest coarser level first); the cell's ``digest`` then follows that
    icon's, so its tiles are redrawn when the ancestor or the cell itself is rendered."""
    by_size = sorted(levels, key=lambda lv: lv.size)
    for k, level in enumerate(by_size):
        m = len(level.cell_id)
        level.fallback_size = np.zeros(m, np.int64)
        level.fallback_row = np.full(m, -1, np.int64)
        for coarser in by_size[k - 1::-1] if k else []:
            open_ = np.flatnonzero(~level.done & (level.fallback_size == 0))
            if not len(open_):
                break
            rows = ancestor_rows(level.coords, level.size, coarser.cell_id, coarser.size)[open_]
            hit = rows >= 0
            hit[hit] = coarser.done[rows[hit]]
            level.fallback_size[open_[hit]] = coarser.size
            level.fallback_row[open_[hit]] = rows[hit]
            level.digest[open_[hit]] = mix64(coarser.digest[rows[hit]] ^ U64(coarser.size)) | U64(1)


def read_icons(icons_path: Path, cells_path: Path, levels: list[Level]) -> tuple[dict[int, IconSource | None], int, str]:
    """Each level's icon source (None: not rendered at all yet), the icon size and settings hash.

    Fills each level's ``done`` flags (as of now: cells rendered later stay placeholders, or
    their ancestors' icons, until the next build), icon ``digest`` and fallbacks
    (:func:`fill_fallbacks`).
    """
    sources: dict[int, IconSource | None] = {}
    try:
        attrs, states = read_icon_state(icons_path, [level.size for level in levels])
    except ArtifactError as e:
        raise TilesError(str(e)) from e
    if attrs.get("kind") != "icons":
        raise TilesError(f"{icons_path} holds {attrs.get('kind')!r}, not 'icons': pass the render stage's icons.h5")
    icon_size = int(attrs.get("icon_size", 0))
    icons_hash = str(attrs.get("settings_hash", ""))
    for level in levels:
        state = states[level.size]
        if state is None:
            log.warning("%s has no icons for grid %d yet; drawing placeholders", icons_path, level.size)
            sources[level.size] = None
            level.done = np.zeros(len(level.cell_id), bool)
            continue
        shape = state.shape
        aligned = state.cell_id is None or np.array_equal(state.cell_id, level.cell_id)
        if shape[0] != len(level.cell_id) or len(shape) != 4 or shape[3] != 3 or not aligned:
            raise TilesError(
                f"{icons_path} grid {level.size} holds icons of shape {shape} for other cells than the "
                f"{len(level.cell_id)} of {cells_path}: they were rendered from other cells; rerun `atlas render`"
            )
        icon_size = icon_size or int(shape[1])
        sources[level.size] = IconSource(icons_path, level.size, int(shape[1]))
        level.done = state.done.astype(bool)
    for level in levels:
        level.digest = icon_digests(sources[level.size], level.done)
    fill_fallbacks(levels)
    return sources, icon_size or 64, icons_hash


__all__ = ["fill_fallbacks", "icon_digests", "IconRows", "IconSource", "Level", "read_cells", "read_icons"]
