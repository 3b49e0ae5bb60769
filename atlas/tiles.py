"""Tiles: ``cells.h5`` + ``icons.h5`` -> a zoomable tile pyramid with JSON metadata.

Carter et al., "Activation Atlas" (Distill 2019) show the atlas as a zoomable map: zoomed out,
a coarse grid of feature-visualization icons; zooming in replaces them by the icons of finer
grids, each icon staying about the same size on screen. This module draws that map.

Layout: slippy-map ``{z}/{x}/{y}`` tiles, read by Leaflet with a ``CRS.Simple``-style flat
projection (y grows downward). We chose it over Deep Zoom (OpenSeadragon) because a slippy map
treats every zoom level as its own image, so each zoom can show *another grid level* -- Deep
Zoom's levels are, by contract, downsamplings of one full-resolution image -- and because its
tile addressing is trivial for any map client (Leaflet, OpenLayers, MapLibre raster sources).

Geometry (all pixel values at the deepest tiled zoom ``max_zoom``; zoom ``z`` is ``2**(z -
max_zoom)`` times smaller)::

    content  = s_max * cell_px       the unit square of the layout; s_max is the finest grid
    margin   = round(margin * content)
    world    = content + 2 * margin  a square; tile (x, y) at zoom z covers pixels
                                     [x * T, (x + 1) * T) x [y * T, (y + 1) * T) of that zoom
    max_zoom = ceil(log2(world / T))  so that zoom 0 fits in one tile of T px

Grid level ``s`` is *native* at zoom ``max_zoom - log2(s_max / s)``, where one of its cells is
``cell_px`` wide; every integer zoom shows the level whose native zoom is closest (ties to the
coarser), so with sizes 20/40/80/160 each zoom step doubles both the map and the grid. Zooms
below the coarsest native zoom show the coarsest grid smaller; the viewer over-zooms the
deepest tiles by ``overzoom`` more steps. Cell ``(iy, ix)`` of level ``s`` covers
``[margin + ix * c, margin + (ix + 1) * c)`` horizontally (``c = content / s``), y likewise; the
icon is centred in it, ``1 - gap`` of the cell wide (times a density factor with
``density_scaling``). Cells whose icon is not rendered yet (``done`` false) are drawn as a flat
placeholder square and redrawn by a later run.

Output folder::

    manifest.json              levels, zoom -> level mapping, geometry, tile size/format, model,
                               layer, class names, build id (see :func:`build_tiles`)
    {z}/{x}/{y}.jpg            tiles (.png / .webp with tile_format)
    meta/{size}/{ry}-{rx}.json per-cell metadata of one region of region x region cells
    icons/{size}/{sy}-{sx}.jpg sprite sheets: the rendered icons of a block of k x k cells at full
                               resolution (k = 512 // icon_size, at most 16), for tooltips and the
                               side panel; a cell's metadata gives its sprite and pixel offset
    thumbs/{row // 1000}/{row}.jpg  dataset-example thumbnails (with activations_path)
    .state.json                per-tile input hashes of the last build (incremental rebuilds)

Incremental: every tile's inputs are summarised by a 64-bit hash (the icon digests, or a
placeholder mark, of the cells drawn on it, and where); a rebuild rewrites only tiles (and
icon sprites) whose hash changed, so re-running after render has finished more cells redraws
just their tiles. Zooms below a grid's native zoom are drawn from their four child tiles.
Changing any drawing setting (or the cells) changes a global hash and redraws everything.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from PIL import Image, ImageColor
from tqdm.auto import tqdm

from atlas.store.common import ArtifactError, open_artifact

log = logging.getLogger(__name__)

#: Bumped whenever the drawing or the file layout changes, so old pyramids get redrawn.
TILES_FORMAT = 1
MANIFEST_KIND = "atlas-tiles"
STATE_FILE = ".state.json"
TileFormat = Literal["jpeg", "png", "webp"]
_EXT = {"jpeg": "jpg", "png": "png", "webp": "webp"}
_U64 = np.uint64
_PLACEHOLDER_DIGEST = 0x9E3779B97F4A7C15


class TilesError(ValueError):
    """Inputs or an output folder that the tiles stage cannot use; the message names the fix."""


# --------------------------------------------------------------------------------------------
# settings and geometry


@dataclass(frozen=True)
class TileSettings:
    """How the pyramid is drawn (all hashed: changing one redraws every tile).

    Attributes:
        tile_size: side of a tile in pixels (256 is what map clients expect).
        cell_px: side of a cell at its native zoom; ``None`` = the icons' own size, so icons are
            drawn 1:1 where their level is native.
        margin: empty border around the layout, as a fraction of the layout's side.
        gap: fraction of a cell left free between neighbouring icons.
        background: map colour (any CSS-style colour Pillow understands, or an RGB tuple).
        placeholder: colour of cells whose icon is not rendered yet.
        density_scaling: scale icons by cell density, ``0.25 + 0.75 * log1p(count) /
            log1p(max count of the level)`` (the paper sizes icons by how many activations
            they average).
        tile_format: ``"jpeg"`` (small, fast), ``"png"`` (lossless) or ``"webp"``.
        quality: JPEG/WebP quality.
        overzoom: zoom steps the viewer may magnify the deepest tiles beyond ``max_zoom``.
        region: metadata files hold ``region x region`` cells of a level.
        examples_per_cell: dataset examples listed (and thumbnailed) per cell.
        thumb_size: side of an example thumbnail in pixels.
        thumb_fraction: side of the thumbnail window as a fraction of the model's input side.
    """

    tile_size: int = 256
    cell_px: int | None = None
    margin: float = 0.03
    gap: float = 0.06
    background: str | tuple[int, int, int] = "#f4f3ef"
    placeholder: str | tuple[int, int, int] = "#d9d7d0"
    density_scaling: bool = False
    tile_format: TileFormat = "jpeg"
    quality: int = 88
    overzoom: int = 2
    region: int = 40
    examples_per_cell: int = 8
    thumb_size: int = 64
    thumb_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        if not 16 <= self.tile_size <= 4096:
            raise TilesError(f"tile_size must be between 16 and 4096 pixels, not {self.tile_size} (256 is standard)")
        if self.cell_px is not None and not 1 <= self.cell_px <= 1024:
            raise TilesError(f"cell_px must be between 1 and 1024, not {self.cell_px}")
        if not 0 <= self.margin <= 1:
            raise TilesError(f"margin is a fraction of the layout side in [0, 1], not {self.margin}")
        if not 0 <= self.gap < 1:
            raise TilesError(f"gap is a fraction of a cell in [0, 1), not {self.gap}")
        if self.tile_format not in _EXT:
            raise TilesError(f"tile_format must be one of {sorted(_EXT)}, not {self.tile_format!r}")
        if not 1 <= self.quality <= 100:
            raise TilesError(f"quality must be in 1..100, not {self.quality}")
        if not 0 <= self.overzoom <= 6:
            raise TilesError(f"overzoom must be in 0..6, not {self.overzoom}")
        if self.region < 1 or self.examples_per_cell < 0 or self.thumb_size < 8:
            raise TilesError("region must be >= 1, examples_per_cell >= 0 and thumb_size >= 8")
        if not 0 < self.thumb_fraction <= 1:
            raise TilesError(f"thumb_fraction must be in (0, 1], not {self.thumb_fraction}")
        parse_color(self.background)
        parse_color(self.placeholder)

    @property
    def ext(self) -> str:
        return _EXT[self.tile_format]


def parse_color(color: str | Sequence[int]) -> tuple[int, int, int]:
    """``"#f4f3ef"``, ``"white"``, ``"rgb(1,2,3)"`` or ``(r, g, b)`` -> an RGB tuple of ints."""
    if isinstance(color, str):
        try:
            rgb = ImageColor.getrgb(color)
        except ValueError as e:
            raise TilesError(f"unknown colour {color!r}: give '#rrggbb', a CSS colour name or an (r, g, b) tuple") from e
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    values = tuple(int(c) for c in color)
    if len(values) != 3 or not all(0 <= c <= 255 for c in values):
        raise TilesError(f"an RGB colour needs three values in 0..255, not {color!r}")
    return values  # type: ignore[return-value]


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


# --------------------------------------------------------------------------------------------
# inputs


@dataclass
class _Level:
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
    digest: np.ndarray = field(default_factory=lambda: np.zeros(0, _U64))


def _read_cells(path: Path) -> tuple[dict[str, Any], list[_Level]]:
    try:
        f = open_artifact(path, "cells", stage="grid")
    except ArtifactError as e:
        raise TilesError(str(e)) from e
    with f:
        if "levels" not in f:
            raise TilesError(f"{path} has no /levels group; rerun `atlas grid`")
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        sizes = sorted(int(s) for s in attrs.get("sizes", [])) or sorted(int(k) for k in f["levels"])
        levels = []
        for size in sizes:
            if str(size) not in f["levels"]:
                raise TilesError(f"{path} lists grid size {size} but has no /levels/{size}; rerun `atlas grid`")
            g = f[f"levels/{size}"]
            try:
                level = _Level(
                    size=size,
                    min_count=int(g.attrs.get("min_count", 1)),
                    cell_id=g["cell_id"][:].astype(np.int64),
                    coords=g["coords"][:].astype(np.int64).reshape(-1, 2),
                    center=g["center"][:].astype(np.float32).reshape(-1, 2),
                    count=g["count"][:].astype(np.int64),
                    top_classes=np.atleast_2d(g["top_classes"][:]).astype(np.int64),
                    top_values=np.atleast_2d(g["top_values"][:]).astype(np.float32),
                    example_rows=np.atleast_2d(g["example_rows"][:]).astype(np.int64),
                    example_images=np.atleast_2d(g["example_images"][:]).astype(np.int64),
                )
            except KeyError as e:
                raise TilesError(f"{path} /levels/{size} lacks a dataset ({e}); rerun `atlas grid`") from e
            m = len(level.cell_id)
            level.top_classes = level.top_classes.reshape(m, -1)
            level.top_values = level.top_values.reshape(m, -1)
            level.example_rows = level.example_rows.reshape(m, -1)
            level.example_images = level.example_images.reshape(m, -1)
            bad = (level.coords < 0) | (level.coords >= size)
            if bad.any() or np.any(level.cell_id != level.coords[:, 0] * size + level.coords[:, 1]):
                raise TilesError(f"{path} /levels/{size}: coords and cell_id disagree or leave the grid; rerun `atlas grid`")
            levels.append(level)
    if not levels:
        raise TilesError(f"{path} has no grid levels; rerun `atlas grid` with at least one size")
    return attrs, levels


def _open_h5(path: Path, tries: int = 100, wait: float = 0.1) -> h5py.File:
    """Open an HDF5 file for reading, waiting while a writer holds its lock (render mid-batch)."""
    for attempt in range(tries):
        try:
            return h5py.File(path, "r")
        except OSError as e:
            if "lock" not in str(e).lower():
                raise TilesError(f"{path} is not a readable HDF5 file ({e}); rerun the stage that writes it") from e
            if attempt == tries - 1:
                raise TilesError(f"{path} stayed locked by another process for {tries * wait:.0f} s "
                                 "(a render writing?); run the tiles stage again in a moment") from e
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class _IconSource:
    """Where one level's icons live; the file is opened per block read, never held open, so a
    render in progress can keep writing between our reads."""

    path: Path
    key: str  # dataset path, e.g. "levels/40/icons"
    icon_size: int


class _IconRows:
    """Reads icon rows of one level in contiguous blocks, with a small LRU of blocks."""

    def __init__(self, source: _IconSource, block: int = 256, keep: int = 8):
        self.source, self.block, self.keep = source, block, keep
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getitem__(self, row: int) -> np.ndarray:
        b = row // self.block
        arr = self._cache.get(b)
        if arr is None:
            with _open_h5(self.source.path) as f:
                arr = f[self.source.key][b * self.block:(b + 1) * self.block]
            self._cache[b] = arr
            if len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return arr[row - b * self.block]


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=_U64).copy()
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


def _icon_digests(source: _IconSource | None, done: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(M,) uint64: a hash of each rendered icon's pixels; a fixed mark for cells not rendered."""
    out = np.full(len(done), _PLACEHOLDER_DIGEST, dtype=_U64)
    if source is None:
        return out
    for start in range(0, len(done), chunk):
        rows = np.flatnonzero(done[start:start + chunk])
        if not len(rows):
            continue
        with _open_h5(source.path) as f:
            block = f[source.key][start:start + chunk]
        for r in rows:
            d = hashlib.blake2b(block[r].tobytes(), digest_size=8).digest()
            out[start + r] = int.from_bytes(d, "little") | 1  # never equals the placeholder mark
    return out


def _array_digest(*arrays: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# drawing


def _tile_pairs(
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


def _tile_hashes(pyr: Pyramid, z: int, level: _Level, cell: np.ndarray, tile: np.ndarray, salt: int) -> np.ndarray:
    """(n*n,) uint64 hash per tile of zoom ``z`` over the digests and ids of the cells drawn on it."""
    n = pyr.n_tiles(z)
    key = level.digest[cell] + _mix64(level.cell_id[cell].astype(_U64) + _U64(level.size << 32))
    acc = np.zeros(n * n, dtype=_U64)
    np.add.at(acc, tile, _mix64(key))
    acc += np.bincount(tile, minlength=n * n).astype(_U64) * _U64(0x2545F4914F6CDD1D)
    return _mix64(acc ^ _mix64(np.full(n * n, salt + z, dtype=_U64)))


class _Painter:
    """Draws the tiles of one zoom level."""

    def __init__(self, pyr: Pyramid, settings: TileSettings, z: int, level: _Level, icons: _IconRows | None):
        self.pyr, self.settings, self.z, self.level, self.icons = pyr, settings, z, level, icons
        self.bg = np.array(parse_color(settings.background), np.uint8)
        self.ph = np.array(parse_color(settings.placeholder), np.uint8)
        scale = density_scale(level.count) if settings.density_scaling else None
        self.left, self.top, self.side = pyr.cell_rects(z, level.coords, settings.gap, scale)
        self._resized: OrderedDict[int, np.ndarray] = OrderedDict()

    def _icon(self, i: int) -> np.ndarray:
        got = self._resized.get(i)
        if got is not None:
            self._resized.move_to_end(i)
            return got
        side = int(self.side[i])
        src = self.icons[int(i)]  # type: ignore[index]
        if src.shape[0] != side or src.shape[1] != side:
            src = np.asarray(Image.fromarray(src).resize((side, side), Image.Resampling.BILINEAR))
        self._resized[i] = src
        if len(self._resized) > 4096:
            self._resized.popitem(last=False)
        return src

    def paint(self, tx: int, ty: int, cells: np.ndarray) -> np.ndarray:
        t = self.pyr.tile_size
        canvas = np.empty((t, t, 3), np.uint8)
        canvas[:] = self.bg
        for i in cells:
            x0 = int(self.left[i]) - tx * t
            y0 = int(self.top[i]) - ty * t
            s = int(self.side[i])
            sx, sy = max(0, -x0), max(0, -y0)
            dx, dy = max(0, x0), max(0, y0)
            w, h = min(s - sx, t - dx), min(s - sy, t - dy)
            if w <= 0 or h <= 0:
                continue
            if self.level.done[i] and self.icons is not None:
                canvas[dy:dy + h, dx:dx + w] = self._icon(int(i))[sy:sy + h, sx:sx + w]
            else:
                canvas[dy:dy + h, dx:dx + w] = self.ph
        return canvas


def _encode(canvas: np.ndarray | Image.Image, settings: TileSettings) -> bytes:
    buf = io.BytesIO()
    img = canvas if isinstance(canvas, Image.Image) else Image.fromarray(canvas)
    if settings.tile_format == "jpeg":
        img.save(buf, "JPEG", quality=settings.quality)
    elif settings.tile_format == "webp":
        img.save(buf, "WEBP", quality=settings.quality, method=4)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name and rename, so a reader (the server) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        if path.parent.exists():
            tmp.unlink(missing_ok=True)
        raise


def _write_if_changed(path: Path, data: bytes) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, data)
    return True


# --------------------------------------------------------------------------------------------
# thumbnails


@dataclass(frozen=True)
class _ModelView:
    """How the model saw a photo: resize (shorter side, or both sides), then centre crop."""

    resize: int | None
    crop: int | None
    keep_aspect: bool = True

    @classmethod
    def from_settings(cls, settings_json: str) -> _ModelView:
        try:
            text = str(json.loads(settings_json or "{}").get("image_transform", ""))
        except (TypeError, ValueError):
            text = ""
        found = {k: v for k, v in re.findall(r"(\w+)=(\w+)", text)}
        try:
            return cls(int(found["resize"]), int(found["crop"]), found.get("keep_aspect", "True") == "True")
        except (KeyError, ValueError):
            return cls(None, None)

    def window(self, width: int, height: int, cy: float, cx: float, fraction: float) -> tuple[float, float, float, float]:
        """Box (left, top, right, bottom) in the original photo around relative crop position (cy, cx)."""
        if self.resize is None or self.crop is None:
            side = min(width, height)  # unknown transform: a centred square crop
            sx = sy = 1.0
            w_r, h_r, crop = width, height, side
        else:
            if self.keep_aspect:
                s = self.resize / min(width, height)
                w_r, h_r = max(self.resize, round(width * s)), max(self.resize, round(height * s))
            else:
                w_r, h_r = self.resize, self.resize
            sx, sy, crop = w_r / width, h_r / height, self.crop
        left0, top0 = (w_r - crop) // 2, (h_r - crop) // 2
        half = fraction * crop / 2
        x = min(max(cx * crop, half), crop - half)
        y = min(max(cy * crop, half), crop - half)
        return ((left0 + x - half) / sx, (top0 + y - half) / sy, (left0 + x + half) / sx, (top0 + y + half) / sy)


class _ImageReader:
    """Encoded bytes of the collected photos, by their key in ``activations.h5``.

    Uses the collect stage's own reader (:func:`atlas.data.open_source` on the stored
    ``source``) when the source can be reopened; otherwise reads keys as paths (absolute, or
    relative to the source folder / the list file's folder) and ``shard.tar::member`` keys with
    :mod:`tarfile`.
    """

    def __init__(self, source: str):
        self.source = source
        base = Path(source)
        self.base = base if base.is_dir() else base.parent  # a list file, a shard or a glob
        self._src: Any = None
        self._tars: OrderedDict[Path, tarfile.TarFile] = OrderedDict()
        try:
            from atlas.data import open_source

            self._src = open_source(source)
        except (ImportError, ValueError, OSError) as e:
            log.info("reading photos by path (could not reopen the source %r: %s)", source, e)

    def read(self, key: str) -> bytes:
        if self._src is not None:
            try:
                return self._src.read_bytes(key)
            except KeyError:
                pass  # not a key of the reopened source (it changed): try the path
        if "::" in key:
            shard, member = key.split("::", 1)
            path = Path(shard) if Path(shard).is_absolute() else self.base / shard
            tar = self._tars.get(path)
            if tar is None:
                tar = self._tars[path] = tarfile.open(path)
                if len(self._tars) > 4:
                    self._tars.popitem(last=False)[1].close()
            try:
                fobj = tar.extractfile(member)
            except KeyError as e:
                raise OSError(f"no member {member!r} in {path}") from e
            if fobj is None:
                raise OSError(f"{member!r} in {path} is not a file")
            return fobj.read()
        path = Path(key)
        return (path if path.is_absolute() else self.base / key).read_bytes()

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()
        if self._src is not None and hasattr(self._src, "close"):
            self._src.close()


def _thumb_path(out: Path, row: int) -> Path:
    return out / "thumbs" / str(row // 1000) / f"{row}.jpg"


def _thumb_url(row: int) -> str:
    return f"thumbs/{row // 1000}/{row}.jpg"


def _existing_thumbs(out: Path) -> set[int]:
    """Rows whose thumbnail file exists (one directory listing per 1000 rows, not a stat per row)."""
    found: set[int] = set()
    try:
        shards = [e for e in os.scandir(out / "thumbs") if e.is_dir() and e.name.isdigit()]
    except FileNotFoundError:
        return found
    for shard in shards:
        for entry in os.scandir(shard.path):
            stem, _, ext = entry.name.partition(".")
            if ext == "jpg" and stem.isdigit():
                found.add(int(stem))
    return found


def _make_thumbs(
    activations_path: Path, layer: str, rows: np.ndarray, out: Path, settings: TileSettings, progress: bool
) -> tuple[int, int]:
    """Write missing thumbnails of layer ``rows``; returns (written, failed images)."""
    with h5py.File(activations_path, "r") as f:
        if f"layers/{layer}" not in f:
            raise TilesError(f"{activations_path} has no layer {layer!r} (has {list(f.get('layers', {}))}); "
                             "pass the activations.h5 the cells were made from")
        g = f[f"layers/{layer}"]
        image_index = g["image_index"][:]
        position = g["position"][:]
        grid_h, grid_w = (int(v) for v in g.attrs["grid_shape"])
        keys = f["images/key"].asstr()[:]
        source = str(f.attrs.get("source", ""))
        view = _ModelView.from_settings(str(f.attrs.get("settings_json", "{}")))
    rows = rows[(rows >= 0) & (rows < len(image_index))]
    existing = _existing_thumbs(out)
    todo = np.array([r for r in rows.tolist() if r not in existing], dtype=np.int64)
    if not len(todo):
        return 0, 0
    images = image_index[todo]
    order = np.argsort(images, kind="stable")  # decode every photo once for all its rows
    todo, images = todo[order], images[order]
    bounds = np.flatnonzero(np.diff(images)) + 1
    written = failed = 0
    size = settings.thumb_size
    reader = _ImageReader(source)
    try:
        with tqdm(total=len(todo), desc="thumbnails", unit="img", disable=not progress) as bar:
            for group in np.split(np.arange(len(todo)), bounds):
                img_id = int(images[group[0]])
                try:
                    img = Image.open(io.BytesIO(reader.read(str(keys[img_id]))))
                    width, height = img.size
                    img.draft("RGB", (max(size * 4, width // 8), max(size * 4, height // 8)))
                    img = img.convert("RGB")
                except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
                    failed += 1
                    if failed <= 5:
                        log.warning("no thumbnail for image %d (%s): %s", img_id, keys[img_id], e)
                    bar.update(len(group))
                    continue
                fx, fy = img.size[0] / width, img.size[1] / height
                for j in group:
                    row = int(todo[j])
                    y, x = position[row]
                    l, t, r, b = view.window(width, height, (y + 0.5) / grid_h, (x + 0.5) / grid_w, settings.thumb_fraction)
                    thumb = img.resize((size, size), Image.Resampling.BICUBIC, box=(l * fx, t * fy, r * fx, b * fy))
                    buf = io.BytesIO()
                    thumb.save(buf, "JPEG", quality=85)
                    path = _thumb_path(out, row)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _write_atomic(path, buf.getvalue())
                    written += 1
                bar.update(len(group))
    finally:
        reader.close()
    if failed:
        log.warning("%d photos could not be read for thumbnails (source %s); their examples show no picture",
                    failed, source)
    return written, failed


# --------------------------------------------------------------------------------------------
# metadata


def _round_sig(values: np.ndarray, digits: int = 4) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    mag = np.floor(np.log10(np.abs(np.where(values == 0, 1, values))))
    factor = 10.0 ** (digits - 1 - mag)
    return (np.round(values * factor) / factor).tolist()


def sprite_cells(icon_size: int) -> int:
    """Cells per side of an icon sprite sheet: sheets of at most 512 px, 1 to 16 cells a side."""
    return max(1, min(16, 512 // max(1, icon_size)))


def _icon_ref(level: _Level, i: int, icon_size: int) -> dict[str, Any] | None:
    """Where the icon of cell row ``i`` lies: its sprite sheet and pixel box in it."""
    if not level.done[i]:
        return None
    k = sprite_cells(icon_size)
    iy, ix = int(level.coords[i, 0]), int(level.coords[i, 1])
    return {"sprite": f"icons/{level.size}/{iy // k}-{ix // k}.jpg", "x": (ix % k) * icon_size,
            "y": (iy % k) * icon_size, "size": icon_size, "sprite_px": k * icon_size}


def _region_files(
    level: _Level, settings: TileSettings, class_names: list[str], thumbs: set[int] | None, icon_size: int
) -> dict[tuple[int, int], bytes]:
    """Per-region JSON documents of one level (cells in row-major order)."""
    r = settings.region
    region = level.coords // r
    key = region[:, 0] * 1_000_000 + region[:, 1]
    order = np.lexsort((level.cell_id, key))
    e = settings.examples_per_cell
    k = level.top_classes.shape[1]
    top_c = level.top_classes.tolist()
    top_v = _round_sig(level.top_values) if k else [[] for _ in range(len(level.cell_id))]
    ex_img = level.example_images[:, :e].tolist()
    ex_row = level.example_rows[:, :e].tolist()
    center = _round_sig(level.center.reshape(-1), 5)
    out: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for i in order.tolist():
        iy, ix = int(level.coords[i, 0]), int(level.coords[i, 1])
        pairs = [[c, v] for c, v in zip(top_c[i], top_v[i]) if c >= 0]
        examples = [img for img in ex_img[i] if img >= 0]
        rows = [row for row in ex_row[i] if row >= 0]
        cell = {
            "id": int(level.cell_id[i]),
            "iy": iy,
            "ix": ix,
            "count": int(level.count[i]),
            "done": bool(level.done[i]),
            "center": center[2 * i:2 * i + 2],
            "top": pairs,
            "examples": examples,
            "thumbs": [_thumb_url(row) if thumbs is not None and row in thumbs else None for row in rows],
            "icon": _icon_ref(level, i, icon_size),
        }
        out.setdefault((iy // r, ix // r), []).append(cell)
    docs = {}
    for (ry, rx), cells in out.items():
        used = sorted({c for cell in cells for c, _v in cell["top"]})
        names = {str(c): (class_names[c] if c < len(class_names) else f"class {c}") for c in used}
        doc = {"level": level.size, "region": [ry, rx], "region_size": r, "names": names, "cells": cells}
        docs[(ry, rx)] = json.dumps(doc, separators=(",", ":")).encode()
    return docs


# --------------------------------------------------------------------------------------------
# the stage


@dataclass
class TilesSummary:
    """What a tiles run did."""

    out_dir: Path
    levels: tuple[int, ...]
    max_zoom: int
    tiles_total: int
    tiles_written: int
    sprites_written: int = 0
    thumbs_written: int = 0
    thumbs_failed: int = 0
    metadata_written: int = 0
    cells_pending: int = 0
    complete: bool = True
    seconds: float = 0.0
    build: str = ""

    def describe(self) -> str:
        pending = f"; {self.cells_pending} cells not rendered yet (placeholders)" if self.cells_pending else ""
        thumbs = f", {self.thumbs_written} thumbnails" if self.thumbs_written else ""
        failed = f" ({self.thumbs_failed} photos unreadable)" if self.thumbs_failed else ""
        return (
            f"tiles: grids {'/'.join(map(str, self.levels))} over zooms 0-{self.max_zoom}: wrote "
            f"{self.tiles_written} of {self.tiles_total} tiles, {self.sprites_written} icon sprites{thumbs}{failed}, "
            f"{self.metadata_written} metadata files in {self.seconds:.1f} s{pending} -> {self.out_dir}"
        )


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TilesError(f"{out} is a file; give a folder for the tiles (e.g. RUN/tiles)")
    if out.is_dir() and any(out.iterdir()):
        if not (out / STATE_FILE).exists() and not (out / "manifest.json").exists():
            raise TilesError(
                f"{out} is not empty and holds no tile pyramid; give a new or empty folder (e.g. RUN/tiles) "
                "so that nothing else gets overwritten"
            )


def _load_state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _clear_pyramid(out: Path) -> None:
    """Remove the tiles, icons and metadata of an older pyramid of ours (thumbnails stay)."""
    for child in out.iterdir():
        if child.is_dir() and (child.name.isdigit() or child.name in ("meta", "icons")):
            shutil.rmtree(child)


@dataclass
class _ZoomPlan:
    """The tiles of one zoom: their input hashes, which changed, and the (cell, tile) overlaps."""

    z: int
    level: _Level
    hashes: np.ndarray  # (n*n,) uint64
    dirty: np.ndarray  # (n*n,) bool
    cell: np.ndarray  # overlaps sorted by tile
    tile: np.ndarray


def _hex(values: np.ndarray) -> list[str]:
    return [format(int(h), "x") for h in values]


def _unhex(values: list[str] | None, n: int) -> np.ndarray | None:
    return np.array([int(h, 16) for h in values], dtype=_U64) if values and len(values) == n else None


def _read_icons(icons_path: Path, cells_path: Path, levels: list[_Level]) -> tuple[dict[int, _IconSource | None], int, str]:
    """Each level's icon source (None: not rendered at all yet), the icon size and settings hash.

    Fills each level's ``done`` flags (as of now: cells rendered later stay placeholders until
    the next build) and icon ``digest``.
    """
    sources: dict[int, _IconSource | None] = {}
    with _open_h5(icons_path) as fi:
        if fi.attrs.get("kind") != "icons":
            raise TilesError(f"{icons_path} holds {fi.attrs.get('kind')!r}, not 'icons': pass the render stage's icons.h5")
        icon_size = int(fi.attrs.get("icon_size", 0))
        icons_hash = str(fi.attrs.get("settings_hash", ""))
        for level in levels:
            key = f"levels/{level.size}"
            if key not in fi or "icons" not in fi[key] or "done" not in fi[key]:
                log.warning("%s has no icons for grid %d yet; drawing placeholders", icons_path, level.size)
                sources[level.size] = None
                level.done = np.zeros(len(level.cell_id), bool)
                continue
            ds = fi[f"{key}/icons"]
            aligned = "cell_id" not in fi[key] or np.array_equal(fi[f"{key}/cell_id"][:], level.cell_id)
            if ds.shape[0] != len(level.cell_id) or ds.ndim != 4 or ds.shape[3] != 3 or not aligned:
                raise TilesError(
                    f"{icons_path} grid {level.size} holds icons of shape {ds.shape} for other cells than the "
                    f"{len(level.cell_id)} of {cells_path}: they were rendered from other cells; rerun `atlas render`"
                )
            icon_size = icon_size or int(ds.shape[1])
            sources[level.size] = _IconSource(icons_path, f"{key}/icons", int(ds.shape[1]))
            level.done = fi[f"{key}/done"][:].astype(bool)
    for level in levels:
        level.digest = _icon_digests(sources[level.size], level.done)
    return sources, icon_size or 64, icons_hash


def _plan_tiles(pyr: Pyramid, settings: TileSettings, levels: list[_Level], old: dict[str, list[str]], salt: int) -> list[_ZoomPlan]:
    """Hash every tile's inputs (vectorised) and compare with the last build's hashes."""
    by_size = {lv.size: lv for lv in levels}
    plans = []
    for z in range(pyr.max_zoom + 1):
        level = by_size[pyr.zoom_levels[z]]
        scale = density_scale(level.count) if settings.density_scaling else None
        left, top, side = pyr.cell_rects(z, level.coords, settings.gap, scale)
        cell, tile = _tile_pairs(pyr, z, left, top, side)
        hashes = _tile_hashes(pyr, z, level, cell, tile, salt)
        before = _unhex(old.get(str(z)), len(hashes))
        dirty = np.ones(len(hashes), bool) if before is None else hashes != before
        order = np.argsort(tile, kind="stable")
        plans.append(_ZoomPlan(z, level, hashes, dirty, cell[order], tile[order]))
    return plans


def _tile_path(out: Path, z: int, tx: int, ty: int, settings: TileSettings) -> Path:
    return out / str(z) / str(tx) / f"{ty}.{settings.ext}"


def _from_children(out: Path, pyr: Pyramid, settings: TileSettings, z: int, tx: int, ty: int) -> Image.Image | None:
    """A tile of zoom ``z`` as its four zoom ``z + 1`` tiles shrunk 2x (None if one is missing)."""
    t, n = pyr.tile_size, pyr.n_tiles(z + 1)
    canvas = Image.new("RGB", (2 * t, 2 * t), parse_color(settings.background))
    for dy in (0, 1):
        for dx in (0, 1):
            cx, cy = 2 * tx + dx, 2 * ty + dy
            if cx >= n or cy >= n:
                continue
            try:
                with Image.open(_tile_path(out, z + 1, cx, cy, settings)) as child:
                    canvas.paste(child.convert("RGB"), (dx * t, dy * t))
            except (OSError, ValueError):
                return None
    return canvas.reduce(2)


def _draw_tiles(
    out: Path, pyr: Pyramid, settings: TileSettings, plans: list[_ZoomPlan], icon_ds: dict[int, _IconSource | None],
    state: dict[str, Any], progress: bool,
) -> int:
    """Draw and write the changed tiles, deepest zoom first; records each finished zoom in the state file.

    A zoom that shows the same grid as the next deeper one (zooms below a level's native zoom)
    is drawn by shrinking its four child tiles -- the usual pyramid step -- instead of pasting
    every (tiny) icon again.
    """
    bg = np.array(parse_color(settings.background), np.uint8)
    empty = _encode(np.broadcast_to(bg, (pyr.tile_size, pyr.tile_size, 3)).copy(), settings)
    n_dirty = int(sum(p.dirty.sum() for p in plans))
    written = 0
    with tqdm(total=n_dirty, desc="tiles", unit="tile", disable=not progress or n_dirty == 0) as bar:
        for plan in sorted(plans, key=lambda p: -p.z):
            if not plan.dirty.any():
                continue
            ds = icon_ds[plan.level.size]
            painter = _Painter(pyr, settings, plan.z, plan.level, _IconRows(ds) if ds is not None else None)
            derive = plan.z < pyr.max_zoom and pyr.zoom_levels[plan.z + 1] == plan.level.size
            n = pyr.n_tiles(plan.z)
            starts = np.searchsorted(plan.tile, np.arange(n * n + 1))
            for t in np.flatnonzero(plan.dirty).tolist():
                ty, tx = divmod(t, n)
                cells_here = plan.cell[starts[t]:starts[t + 1]]
                if not len(cells_here):
                    data = empty
                else:
                    canvas: np.ndarray | Image.Image | None = None
                    if derive:
                        canvas = _from_children(out, pyr, settings, plan.z, tx, ty)
                    if canvas is None:
                        canvas = painter.paint(tx, ty, cells_here)
                    data = _encode(canvas, settings)
                path = _tile_path(out, plan.z, tx, ty, settings)
                path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(path, data)
                written += 1
                bar.update(1)
            # an interrupted build redoes only the zooms it had not finished
            state.setdefault("tiles", {})[str(plan.z)] = _hex(plan.hashes)
            _write_atomic(out / STATE_FILE, json.dumps(state).encode())
    return written


def _write_sprites(
    out: Path, levels: list[_Level], icon_ds: dict[int, _IconSource | None], icon_size: int, state: dict[str, Any],
    salt: int,
) -> int:
    """Sprite sheets of rendered icons (full resolution) whose cells changed; returns sheets written."""
    k = sprite_cells(icon_size)
    bg = np.array(parse_color("#e9e7e1"), np.uint8)
    written = 0
    for level in levels:
        n = math.ceil(level.size / k)
        sheet = (level.coords[:, 0] // k) * n + level.coords[:, 1] // k
        acc = np.zeros(n * n, dtype=_U64)
        np.add.at(acc, sheet, _mix64(level.digest + _mix64(level.cell_id.astype(_U64) + _U64(salt))))
        hashes = _mix64(acc)
        before = _unhex(state.get("sprites", {}).get(str(level.size)), len(hashes))
        has_icon = np.bincount(sheet, weights=level.done, minlength=n * n) > 0
        changed = has_icon & (True if before is None else hashes != before)
        ds = icon_ds[level.size]
        if ds is not None and changed.any():
            rows = _IconRows(ds)
            folder = out / "icons" / str(level.size)
            folder.mkdir(parents=True, exist_ok=True)
            order = np.argsort(sheet, kind="stable")
            starts = np.searchsorted(sheet[order], np.arange(n * n + 1))
            for s_id in np.flatnonzero(changed).tolist():
                canvas = np.empty((k * icon_size, k * icon_size, 3), np.uint8)
                canvas[:] = bg
                for i in order[starts[s_id]:starts[s_id + 1]].tolist():
                    if level.done[i]:
                        y, x = (int(level.coords[i, 0]) % k) * icon_size, (int(level.coords[i, 1]) % k) * icon_size
                        icon = rows[i]
                        if icon.shape[0] != icon_size:
                            icon = np.asarray(Image.fromarray(icon).resize((icon_size, icon_size), Image.Resampling.BILINEAR))
                        canvas[y:y + icon_size, x:x + icon_size] = icon
                buf = io.BytesIO()
                Image.fromarray(canvas).save(buf, "JPEG", quality=95, subsampling=0)  # 4:4:4: crisp colours
                sy, sx = divmod(s_id, n)
                _write_atomic(folder / f"{sy}-{sx}.jpg", buf.getvalue())
                written += 1
        state.setdefault("sprites", {})[str(level.size)] = _hex(hashes)
    return written


def _write_thumbs(
    out: Path, activations_path: Path, layer: str, levels: list[_Level], settings: TileSettings,
    state: dict[str, Any], progress: bool,
) -> tuple[int, int, set[int], dict[str, str]]:
    """Thumbnails of every listed example; returns (written, failed photos, rows with one, source info)."""
    if not activations_path.is_file():
        raise TilesError(f"{activations_path} does not exist; pass the collect stage's activations.h5 "
                         "or leave activations_path out (no example thumbnails)")
    key = json.dumps([settings.thumb_size, settings.thumb_fraction, str(activations_path.resolve())])
    if state.get("thumbs") != key and (out / "thumbs").exists():
        shutil.rmtree(out / "thumbs")
    rows = np.unique(np.concatenate([lv.example_rows[:, :settings.examples_per_cell].ravel() for lv in levels]))
    written, failed = _make_thumbs(activations_path, layer, rows[rows >= 0], out, settings, progress)
    state["thumbs"] = key
    with h5py.File(activations_path, "r") as fa:
        info = {"settings_hash": str(fa.attrs.get("settings_hash", "")), "source": str(fa.attrs.get("source", ""))}
    return written, failed, _existing_thumbs(out), info


def _write_metadata(
    out: Path, pyr: Pyramid, settings: TileSettings, levels: list[_Level], class_names: list[str],
    thumbs: set[int] | None, icon_size: int,
) -> tuple[int, list[dict[str, Any]], bytes]:
    """Region files of every level (rewritten only when changed); returns (written, manifest entries, digest)."""
    written = 0
    digest = hashlib.blake2b(digest_size=8)
    entries = []
    for level in levels:
        docs = _region_files(level, settings, class_names, thumbs, icon_size)
        folder = out / "meta" / str(level.size)
        for (ry, rx), data in sorted(docs.items()):
            digest.update(data)
            written += _write_if_changed(folder / f"{ry}-{rx}.json", data)
        entries.append({
            "size": level.size,
            "min_count": level.min_count,
            "native_zoom": round(pyr.native_zoom(level.size), 4),
            "zooms": [z for z in range(pyr.max_zoom + 1) if pyr.zoom_levels[z] == level.size],
            "n_cells": int(len(level.cell_id)),
            "n_done": int(level.done.sum()),
            "count_total": int(level.count.sum()),
            "count_max": int(level.count.max()) if len(level.count) else 0,
            "region": settings.region,
            "regions": sorted([list(k) for k in docs]),
            "meta_url": f"meta/{level.size}/{{ry}}-{{rx}}.json",
            "sprite_url": f"icons/{level.size}/{{sy}}-{{sx}}.jpg",
            "sprite_cells": sprite_cells(icon_size),
        })
    return written, entries, digest.digest()


def build_tiles(
    cells_path: str | os.PathLike,
    icons_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    activations_path: str | os.PathLike | None = None,
    tile_size: int = 256,
    background: str | tuple[int, int, int] = "#f4f3ef",
    density_scaling: bool = False,
    progress: bool = True,
    cell_px: int | None = None,
    tile_format: TileFormat = "jpeg",
    placeholder: str | tuple[int, int, int] = "#d9d7d0",
    margin: float = 0.03,
    gap: float = 0.06,
    quality: int = 88,
    examples_per_cell: int = 8,
    thumb_size: int = 64,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> TilesSummary:
    """Draw the tile pyramid of an atlas and write its metadata (see the module docstring).

    Args:
        cells_path: ``cells.h5`` of the grid stage (must be complete).
        icons_path: ``icons.h5`` of the render stage; may be incomplete -- cells not ``done``
            are drawn as placeholders and redrawn by a later call.
        out_dir: the tiles folder (created; must be new, empty or an earlier pyramid).
        activations_path: ``activations.h5`` the cells came from; when given, dataset-example
            thumbnails are cut from the photos (the window the model saw around each sample).
        tile_size, background, density_scaling, cell_px, tile_format, placeholder, margin, gap,
            quality, examples_per_cell, thumb_size: see :class:`TileSettings`.
        progress: show tqdm progress bars.
        class_names: names of the model's classes (default: the 1000 ImageNet classes).
        title: a title for the viewer (default: ``model · layer``).

    Returns:
        A :class:`TilesSummary`; ``tiles_written`` counts the tiles (re)drawn by this call.
    """
    t0 = time.perf_counter()
    settings = TileSettings(
        tile_size=tile_size, cell_px=cell_px, margin=margin, gap=gap, background=background,
        placeholder=placeholder, density_scaling=density_scaling, tile_format=tile_format, quality=quality,
        examples_per_cell=examples_per_cell, thumb_size=thumb_size,
    )
    cells_path, icons_path, out = Path(cells_path), Path(icons_path), Path(out_dir)
    _check_out_dir(out)
    cattrs, levels = _read_cells(cells_path)
    if class_names is None:
        from atlas.resources import imagenet_class_names

        class_names = imagenet_class_names()
    class_names = list(class_names)
    if not icons_path.is_file():
        raise TilesError(f"{icons_path} does not exist; run the render stage (`atlas render`) first")
    out.mkdir(parents=True, exist_ok=True)

    icon_ds, icon_size, icons_hash = _read_icons(icons_path, cells_path, levels)
    pyr = plan_pyramid([lv.size for lv in levels], settings.tile_size, settings.cell_px or icon_size, settings.margin)
    global_hash = hashlib.blake2b(json.dumps({
        "format": TILES_FORMAT, "settings": asdict(settings), "pyramid": asdict(pyr),
        "cells": [cattrs.get("settings_hash"), [_array_digest(lv.cell_id, lv.count) for lv in levels]],
        "icons": [icons_hash, icon_size],
    }, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
    state = _load_state(out)
    if state.get("global") != global_hash:
        if state or (out / "manifest.json").exists():
            log.info("drawing settings or cells changed since the last build; redrawing every tile")
        _clear_pyramid(out)
        state = {"global": global_hash}
    plans = _plan_tiles(pyr, settings, levels, state.get("tiles", {}), int(global_hash, 16) & 0x7FFFFFFFFFFFFFFF)
    written = _draw_tiles(out, pyr, settings, plans, icon_ds, state, progress)
    sprites_written = _write_sprites(out, levels, icon_ds, icon_size, state, int(global_hash[:8], 16))

    thumbs_written = thumbs_failed = 0
    thumbs: set[int] | None = None
    acts_info: dict[str, str] | None = None
    if activations_path is not None:
        thumbs_written, thumbs_failed, thumbs, acts_info = _write_thumbs(
            out, Path(activations_path), str(cattrs.get("layer", "")), levels, settings, state, progress)
    meta_written, level_entries, meta_digest = _write_metadata(out, pyr, settings, levels, class_names, thumbs, icon_size)

    pending = int(sum((~lv.done).sum() for lv in levels))
    build = hashlib.blake2b(global_hash.encode(), digest_size=6)
    build.update(_array_digest(*[p.hashes for p in plans], *[lv.digest for lv in levels]).encode() + meta_digest)
    model, layer = str(cattrs.get("model", "")), str(cattrs.get("layer", ""))
    manifest = {
        "kind": MANIFEST_KIND,
        "format": TILES_FORMAT,
        "atlas_version": str(cattrs.get("atlas_version", "")),
        "title": title or " · ".join(x for x in (model, layer) if x) or "activation atlas",
        "model": model,
        "layer": layer,
        "build": build.hexdigest(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": pending == 0,
        "tile_size": pyr.tile_size,
        "tile_format": settings.tile_format,
        "tile_url": f"{{z}}/{{x}}/{{y}}.{settings.ext}",
        "min_zoom": 0,
        "max_native_zoom": pyr.max_zoom,
        "max_zoom": pyr.max_zoom + settings.overzoom,
        "world_px": pyr.world_px,
        "content_px": pyr.content_px,
        "margin_px": pyr.margin_px,
        "cell_px": pyr.cell_px,
        "gap": settings.gap,
        "icon_size": icon_size,
        "background": "#%02x%02x%02x" % parse_color(settings.background),
        "placeholder": "#%02x%02x%02x" % parse_color(settings.placeholder),
        "density_scaling": settings.density_scaling,
        "zooms": [
            {"z": z, "level": pyr.zoom_levels[z], "cell_px": round(pyr.cell_size(z), 3), "tiles": pyr.n_tiles(z)}
            for z in range(pyr.max_zoom + 1)
        ],
        "levels": level_entries,
        "thumbs": thumbs is not None,
        "thumb_size": settings.thumb_size,
        "inputs": {
            "cells": {"settings_hash": str(cattrs.get("settings_hash", "")),
                      "settings_json": str(cattrs.get("settings_json", ""))},
            "icons": {"settings_hash": icons_hash, "icon_size": icon_size},
            "activations": acts_info,
        },
        "classes": class_names,
    }
    _write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    _write_atomic(out / STATE_FILE, json.dumps(state).encode())
    summary = TilesSummary(
        out_dir=out, levels=tuple(pyr.sizes), max_zoom=pyr.max_zoom, tiles_total=sum(len(p.hashes) for p in plans),
        tiles_written=written, sprites_written=sprites_written, thumbs_written=thumbs_written, thumbs_failed=thumbs_failed,
        metadata_written=meta_written, cells_pending=pending, complete=pending == 0,
        seconds=time.perf_counter() - t0, build=manifest["build"],
    )
    log.info("%s", summary.describe())
    return summary


def read_manifest(tiles_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``manifest.json`` of a tiles folder; raises :class:`TilesError` naming the fix."""
    path = Path(tiles_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TilesError(f"{path} is missing; build the pyramid with `atlas tiles` first") from e
    except ValueError as e:
        raise TilesError(f"{path} is not valid JSON ({e}); rebuild it with `atlas tiles`") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise TilesError(f"{path} is not an atlas tiles manifest; rebuild it with `atlas tiles`")
    return manifest


def atlas_image(tiles_dir: str | os.PathLike, zoom: int | None = None) -> tuple[Image.Image, Callable[[np.ndarray], np.ndarray]]:
    """The whole atlas as one picture, stitched from the tiles of ``zoom`` (default: the
    deepest zoom whose picture is at most 1024 px wide), and the map from layout ``(x, y)`` in
    [0, 1] to pixel ``(x, y)`` of that picture. Tiles not drawn yet are left background."""
    tiles_dir = Path(tiles_dir)
    m = read_manifest(tiles_dir)
    top = int(m["max_native_zoom"])
    if zoom is None:
        zoom = 0
        while zoom < top and m["world_px"] / 2 ** (top - zoom - 1) <= 1024:
            zoom += 1
    if not 0 <= zoom <= top:
        raise TilesError(f"zoom {zoom} is not in the pyramid (0..{top})")
    scale = 2.0 ** (zoom - top)
    side = int(np.ceil(m["world_px"] * scale))
    tile = int(m["tile_size"])
    canvas = Image.new("RGB", (side, side), parse_color(m.get("background", "#ffffff")))
    ext = m["tile_url"].rsplit(".", 1)[-1]
    for tx in range(-(-side // tile)):
        for ty in range(-(-side // tile)):
            path = tiles_dir / str(zoom) / str(tx) / f"{ty}.{ext}"
            if path.is_file():
                with Image.open(path) as im:
                    canvas.paste(im.convert("RGB"), (tx * tile, ty * tile))

    def to_pixels(xy: np.ndarray) -> np.ndarray:
        return (m["margin_px"] + np.asarray(xy, np.float64) * m["content_px"]) * scale

    return canvas, to_pixels


__all__ = [
    "Pyramid",
    "TileSettings",
    "TilesError",
    "TilesSummary",
    "atlas_image",
    "build_tiles",
    "density_scale",
    "parse_color",
    "plan_pyramid",
    "read_manifest",
    "sprite_cells",
]
