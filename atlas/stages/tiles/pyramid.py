"""Pyramid planning: the geometry of zooms, grid levels, cells and tiles (see :mod:`atlas.stages.tiles`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from atlas.stages.tiles.settings import TilesError


@dataclass(frozen=True)
class Pyramid:
    """Where everything lands; see the module docstring for the geometry.

    Attributes:
        sizes: grid sizes, ascending.
        tile_size: tile side in pixels.
        cell_px: side of a finest-grid cell at ``max_zoom``.
        margin_px: border at ``max_zoom``.
        max_zoom: deepest tiled zoom (zoom 0 is the whole map in one tile).
        zoom_levels: the grid size shown at each zoom ``0 .. max_zoom``.
    """

    sizes: tuple[int, ...]
    tile_size: int
    cell_px: int
    margin_px: int
    max_zoom: int
    zoom_levels: tuple[int, ...]

    @property
    def content_px(self) -> int:
        return self.sizes[-1] * self.cell_px

    @property
    def world_px(self) -> int:
        return self.content_px + 2 * self.margin_px

    def scale(self, z: int) -> float:
        return 2.0 ** (z - self.max_zoom)

    def n_tiles(self, z: int) -> int:
        """Tiles per side at zoom ``z``."""
        return max(1, math.ceil(self.world_px * self.scale(z) / self.tile_size - 1e-9))

    def cell_size(self, z: int, size: int | None = None) -> float:
        """Side of a cell of grid ``size`` (default: the one shown at ``z``) at zoom ``z``, in px."""
        size = self.zoom_levels[z] if size is None else size
        return self.content_px * self.scale(z) / size

    def native_zoom(self, size: int) -> float:
        return self.max_zoom - math.log2(self.sizes[-1] / size)

    def cell_rects(
        self, z: int, coords: np.ndarray, gap: float, scale: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel boxes at zoom ``z`` of cells ``coords`` ``(M, 2)`` (iy, ix) of the level shown there.

        Returns ``(left, top, side)``, each ``(M,)`` int64: the icon covers columns
        ``left .. left + side - 1`` and rows ``top .. top + side - 1`` of the zoom's pixel grid.
        """
        c = self.cell_size(z)
        m = self.margin_px * self.scale(z)
        box = np.full(len(coords), c * (1.0 - gap)) if scale is None else c * (1.0 - gap) * scale
        side = np.maximum(1, np.floor(box + 0.5)).astype(np.int64)
        iy = coords[:, 0].astype(np.float64)
        ix = coords[:, 1].astype(np.float64)
        left = np.floor(m + ix * c + (c - side) / 2 + 0.5).astype(np.int64)
        top = np.floor(m + iy * c + (c - side) / 2 + 0.5).astype(np.int64)
        return left, top, side


def plan_pyramid(sizes: Sequence[int], tile_size: int = 256, cell_px: int = 64, margin: float = 0.03) -> Pyramid:
    """The pyramid geometry for grid ``sizes``: deepest zoom and the grid shown at each zoom."""
    sizes = tuple(sorted({int(s) for s in sizes}))
    if not sizes or sizes[0] < 1:
        raise TilesError(f"need at least one positive grid size, got {list(sizes)}")
    content = sizes[-1] * cell_px
    margin_px = int(round(margin * content))
    world = content + 2 * margin_px
    max_zoom = max(0, math.ceil(math.log2(world / tile_size) - 1e-9))
    native = np.array([max_zoom - math.log2(sizes[-1] / s) for s in sizes])
    # argmin takes the first of equals: ties go to the coarser grid
    zoom_levels = tuple(sizes[int(np.argmin(np.abs(native - z)))] for z in range(max_zoom + 1))
    return Pyramid(sizes, tile_size, cell_px, margin_px, max_zoom, zoom_levels)


def density_scale(count: np.ndarray) -> np.ndarray:
    """Icon scale ``0.25 + 0.75 * log1p(count) / log1p(max count)`` in (0.25, 1] for one level."""
    count = np.asarray(count, dtype=np.float64)
    top = np.log1p(count.max()) if len(count) else 1.0
    return 0.25 + 0.75 * np.log1p(count) / max(top, 1e-12)


def tile_pairs(
    pyr: Pyramid, z: int, left: np.ndarray, top: np.ndarray, side: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every (cell, tile) overlap at zoom ``z``: ``(cell_index, tile_index)`` with tile_index = ty * n + tx."""
    t, n = pyr.tile_size, pyr.n_tiles(z)
    tx0 = np.clip(left // t, 0, n - 1)
    ty0 = np.clip(top // t, 0, n - 1)
    nx = np.clip((left + side - 1) // t, 0, n - 1) - tx0 + 1
    ny = np.clip((top + side - 1) // t, 0, n - 1) - ty0 + 1
    per = nx * ny
    cell = np.repeat(np.arange(len(left)), per)
    offset = np.arange(len(cell)) - np.repeat(np.cumsum(per) - per, per)
    tx = tx0[cell] + offset % nx[cell]
    ty = ty0[cell] + offset // nx[cell]
    return cell, ty * n + tx


__all__ = ["density_scale", "plan_pyramid", "Pyramid", "tile_pairs"]
