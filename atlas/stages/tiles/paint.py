"""Painting: tiles (icons pasted on the background, or four child tiles shrunk) and icon sprite sheets."""

from __future__ import annotations

import io
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from atlas.stages.tiles.files import write_atomic
from atlas.stages.tiles.hashing import U64, hex_list, mix64, unhex_list
from atlas.stages.tiles.inputs import IconRows, IconSource, Level
from atlas.stages.tiles.metadata import sprite_cells
from atlas.stages.tiles.pyramid import Pyramid, density_scale
from atlas.stages.tiles.settings import STATE_FILE, TileSettings, parse_color
from atlas.stages.tiles.state import ZoomPlan


class Painter:
    """Draws the tiles of one zoom level.

    A cell not rendered yet shows the part of its nearest rendered ancestor's icon that covers
    its box (the ancestor's icon stretched over the ancestor's cell, as if that level were shown
    at this zoom; ``Level.fallback_size``), or the placeholder colour when no ancestor is rendered.
    """

    def __init__(self, pyr: Pyramid, settings: TileSettings, z: int, level: Level, icons: IconRows | None,
                 ancestors: Mapping[int, IconRows] | None = None):
        self.pyr, self.settings, self.z, self.level, self.icons = pyr, settings, z, level, icons
        self.ancestors = ancestors or {}
        self.bg = np.array(parse_color(settings.background), np.uint8)
        self.ph = np.array(parse_color(settings.placeholder), np.uint8)
        scale = density_scale(level.count) if settings.density_scaling else None
        self.left, self.top, self.side = pyr.cell_rects(z, level.coords, settings.gap, scale)
        self._resized: OrderedDict[int, np.ndarray] = OrderedDict()

    def _cached(self, key: int, make: Callable[[], np.ndarray]) -> np.ndarray:
        """``make()``, kept in a small LRU of resized icons under ``key``."""
        got = self._resized.get(key)
        if got is not None:
            self._resized.move_to_end(key)
            return got
        got = self._resized[key] = make()
        if len(self._resized) > 4096:
            self._resized.popitem(last=False)
        return got

    def _icon(self, i: int) -> np.ndarray:
        def make() -> np.ndarray:
            side = int(self.side[i])
            src = self.icons[int(i)]  # type: ignore[index]
            if src.shape[0] != side or src.shape[1] != side:
                src = np.asarray(Image.fromarray(src).resize((side, side), Image.Resampling.BILINEAR))
            return src

        return self._cached(i, make)

    def _fallback(self, i: int) -> np.ndarray:
        """The box of cell row ``i`` cut from its ancestor's icon and scaled to the box."""
        def make() -> np.ndarray:
            size, side = int(self.level.fallback_size[i]), int(self.side[i])
            src = self.ancestors[size][int(self.level.fallback_row[i])]
            f = self.level.size / size  # cells of this level per ancestor cell, along a side
            iy, ix = (float(v) for v in self.level.coords[i])
            off = (1.0 - side / self.pyr.cell_size(self.z)) / 2  # the box's inset in its cell, in cells
            u0 = (ix - np.floor((ix + 0.5) / f) * f + off) / f
            v0 = (iy - np.floor((iy + 0.5) / f) * f + off) / f
            w, n = side / self.pyr.cell_size(self.z) / f, src.shape[0]
            return np.asarray(Image.fromarray(src).resize((side, side), Image.Resampling.BILINEAR,
                                                          box=(u0 * n, v0 * n, (u0 + w) * n, (v0 + w) * n)))

        return self._cached(-1 - i, make)

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
            elif self.level.fallback_size[i] in self.ancestors:
                canvas[dy:dy + h, dx:dx + w] = self._fallback(int(i))[sy:sy + h, sx:sx + w]
            else:
                canvas[dy:dy + h, dx:dx + w] = self.ph
        return canvas


def encode(canvas: np.ndarray | Image.Image, settings: TileSettings) -> bytes:
    buf = io.BytesIO()
    img = canvas if isinstance(canvas, Image.Image) else Image.fromarray(canvas)
    if settings.tile_format == "jpeg":
        img.save(buf, "JPEG", quality=settings.quality)
    elif settings.tile_format == "webp":
        img.save(buf, "WEBP", quality=settings.quality, method=4)
    else:
        img.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def tile_path(out: Path, z: int, tx: int, ty: int, settings: TileSettings) -> Path:
    return out / str(z) / str(tx) / f"{ty}.{settings.ext}"


def from_children(out: Path, pyr: Pyramid, settings: TileSettings, z: int, tx: int, ty: int) -> Image.Image | None:
    """A tile of zoom ``z`` as its four zoom ``z + 1`` tiles shrunk 2x (None if one is missing)."""
    t, n = pyr.tile_size, pyr.n_tiles(z + 1)
    canvas = Image.new("RGB", (2 * t, 2 * t), parse_color(settings.background))
    for dy in (0, 1):
        for dx in (0, 1):
            cx, cy = 2 * tx + dx, 2 * ty + dy
            if cx >= n or cy >= n:
                continue
            try:
                with Image.open(tile_path(out, z + 1, cx, cy, settings)) as child:
                    canvas.paste(child.convert("RGB"), (dx * t, dy * t))
            except (OSError, ValueError):
                return None
    return canvas.reduce(2)


def draw_tiles(
    out: Path, pyr: Pyramid, settings: TileSettings, plans: list[ZoomPlan], icon_ds: dict[int, IconSource | None],
    state: dict[str, Any], progress: bool,
) -> int:
    """Draw and write the changed tiles, deepest zoom first; records each finished zoom in the state file.

    A zoom that shows the same grid as the next deeper one (zooms below a level's native zoom)
    is drawn by shrinking its four child tiles -- the usual pyramid step -- instead of pasting
    every (tiny) icon again.
    """
    bg = np.array(parse_color(settings.background), np.uint8)
    empty = encode(np.broadcast_to(bg, (pyr.tile_size, pyr.tile_size, 3)).copy(), settings)
    n_dirty = int(sum(p.dirty.sum() for p in plans))
    written = 0
    with tqdm(total=n_dirty, desc="tiles", unit="tile", disable=not progress or n_dirty == 0) as bar:
        for plan in sorted(plans, key=lambda p: -p.z):
            if not plan.dirty.any():
                continue
            ds = icon_ds[plan.level.size]
            ancestors = {s: IconRows(d) for s, d in icon_ds.items() if s < plan.level.size and d is not None}
            painter = Painter(pyr, settings, plan.z, plan.level, IconRows(ds) if ds is not None else None, ancestors)
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
                        canvas = from_children(out, pyr, settings, plan.z, tx, ty)
                    if canvas is None:
                        canvas = painter.paint(tx, ty, cells_here)
                    data = encode(canvas, settings)
                path = tile_path(out, plan.z, tx, ty, settings)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, data)
                written += 1
                bar.update(1)
            # an interrupted build redoes only the zooms it had not finished
            state.setdefault("tiles", {})[str(plan.z)] = hex_list(plan.hashes)
            write_atomic(out / STATE_FILE, json.dumps(state).encode())
    return written


def write_sprites(
    out: Path, levels: list[Level], icon_ds: dict[int, IconSource | None], icon_size: int, state: dict[str, Any],
    salt: int,
) -> int:
    """Sprite sheets of rendered icons (full resolution) whose cells changed; returns sheets written."""
    k = sprite_cells(icon_size)
    bg = np.array(parse_color("#e9e7e1"), np.uint8)
    written = 0
    for level in levels:
        n = math.ceil(level.size / k)
        sheet = (level.coords[:, 0] // k) * n + level.coords[:, 1] // k
        acc = np.zeros(n * n, dtype=U64)
        np.add.at(acc, sheet, mix64(level.digest + mix64(level.cell_id.astype(U64) + U64(salt))))
        hashes = mix64(acc)
        before = unhex_list(state.get("sprites", {}).get(str(level.size)), len(hashes))
        has_icon = np.bincount(sheet, weights=level.done, minlength=n * n) > 0
        changed = has_icon & (True if before is None else hashes != before)
        ds = icon_ds[level.size]
        if ds is not None and changed.any():
            rows = IconRows(ds)
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
                write_atomic(folder / f"{sy}-{sx}.jpg", buf.getvalue())
                written += 1
        state.setdefault("sprites", {})[str(level.size)] = hex_list(hashes)
    return written


__all__ = ["draw_tiles", "encode", "from_children", "Painter", "tile_path", "write_sprites"]
