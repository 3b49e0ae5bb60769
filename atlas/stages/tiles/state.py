"""The build state: which tiles changed since the last build (per-tile input hashes in
``.state.json``), and the checks and clean-up of the output folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlas.stages.tiles.hashing import U64, mix64, unhex_list
from atlas.stages.tiles.inputs import Level
from atlas.stages.tiles.pyramid import Pyramid, density_scale, tile_pairs
from atlas.stages.tiles.settings import STATE_FILE, TilesError, TileSettings


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TilesError(f"{out} is a file; give a folder for the tiles (e.g. RUN/tiles)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / STATE_FILE).exists() and not (out / "manifest.json").exists():
            raise TilesError(
                f"{out} is not empty and holds no tile pyramid; give a new or empty folder (e.g. RUN/tiles) "
                "so that nothing else gets overwritten"
            )


def load_state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def clear_pyramid(out: Path) -> None:
    """Remove the tiles, icons and metadata of an older pyramid of ours (thumbnails stay)."""
    for child in out.iterdir():
        if child.is_dir() and (child.name.isdigit() or child.name in ("meta", "icons")):
            shutil.rmtree(child)


@dataclass
class ZoomPlan:
    """The tiles of one zoom: their input hashes, which changed, and the (cell, tile) overlaps."""

    z: int
    level: Level
    hashes: np.ndarray  # (n*n,) uint64
    dirty: np.ndarray  # (n*n,) bool
    cell: np.ndarray  # overlaps sorted by tile
    tile: np.ndarray


def tile_hashes(pyr: Pyramid, z: int, level: Level, cell: np.ndarray, tile: np.ndarray, salt: int) -> np.ndarray:
    """(n*n,) uint64 hash per tile of zoom ``z`` over the digests and ids of the cells drawn on it."""
    n = pyr.n_tiles(z)
    key = level.digest[cell] + mix64(level.cell_id[cell].astype(U64) + U64(level.size << 32))
    acc = np.zeros(n * n, dtype=U64)
    np.add.at(acc, tile, mix64(key))
    acc += np.bincount(tile, minlength=n * n).astype(U64) * U64(0x2545F4914F6CDD1D)
    return mix64(acc ^ mix64(np.full(n * n, salt + z, dtype=U64)))


def plan_tiles(pyr: Pyramid, settings: TileSettings, levels: list[Level], old: dict[str, list[str]], salt: int) -> list[ZoomPlan]:
    """Hash every tile's inputs (vectorised) and compare with the last build's hashes."""
    by_size = {lv.size: lv for lv in levels}
    plans = []
    for z in range(pyr.max_zoom + 1):
        level = by_size[pyr.zoom_levels[z]]
        scale = density_scale(level.count) if settings.density_scaling else None
        left, top, side = pyr.cell_rects(z, level.coords, settings.gap, scale)
        cell, tile = tile_pairs(pyr, z, left, top, side)
        hashes = tile_hashes(pyr, z, level, cell, tile, salt)
        before = unhex_list(old.get(str(z)), len(hashes))
        dirty = np.ones(len(hashes), bool) if before is None else hashes != before
        order = np.argsort(tile, kind="stable")
        plans.append(ZoomPlan(z, level, hashes, dirty, cell[order], tile[order]))
    return plans


__all__ = ["check_out_dir", "clear_pyramid", "load_state", "plan_tiles", "tile_hashes", "ZoomPlan"]
