"""The tiles stage: :func:`build_tiles` draws the pyramid, sprites, thumbnails and metadata, and
writes the manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from atlas.stages.tiles.files import write_atomic
from atlas.stages.tiles.hashing import array_digest
from atlas.stages.tiles.inputs import read_cells, read_icons
from atlas.stages.tiles.metadata import write_metadata
from atlas.stages.tiles.paint import draw_tiles, write_sprites
from atlas.stages.tiles.pyramid import plan_pyramid
from atlas.stages.tiles.settings import (
    MANIFEST_KIND,
    STATE_FILE,
    TILES_FORMAT,
    TileFormat,
    TilesError,
    TileSettings,
    parse_color,
)
from atlas.stages.tiles.state import check_out_dir, clear_pyramid, load_state, plan_tiles
from atlas.stages.tiles.thumbs import write_thumbs
from atlas.store.common import SettingsChangedError, settings_diff
from atlas.store.lineage import input_record, require_current

log = logging.getLogger("atlas.stages.tiles")


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
    #: of those, the cells drawn as a rendered ancestor's icon (the rest are placeholders)
    cells_fallback: int = 0
    complete: bool = True
    seconds: float = 0.0
    build: str = ""

    def describe(self) -> str:
        shown = f"{self.cells_fallback} shown as a coarser cell's icon, " if self.cells_fallback else ""
        grey = self.cells_pending - self.cells_fallback
        pending = (f"; {self.cells_pending} cells not rendered yet ({shown}{grey} placeholders)"
                   if self.cells_pending else "")
        thumbs = f", {self.thumbs_written} thumbnails" if self.thumbs_written else ""
        failed = f" ({self.thumbs_failed} photos unreadable)" if self.thumbs_failed else ""
        return (
            f"tiles: grids {'/'.join(map(str, self.levels))} over zooms 0-{self.max_zoom}: wrote "
            f"{self.tiles_written} of {self.tiles_total} tiles, {self.sprites_written} icon sprites{thumbs}{failed}, "
            f"{self.metadata_written} metadata files in {self.seconds:.1f} s{pending} -> {self.out_dir}"
        )


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
    comparison: Mapping[str, Any] | None = None,
    layer_set: Sequence[str] | None = None,
    aligned: Mapping[str, Any] | None = None,
    overwrite: bool = False,
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
        comparison: what a class-comparison atlas's x axis means, written to the manifest as
            ``comparison`` (``{"left": {"index", "name"}, "right": {"index", "name"}, "x": str}``;
            :func:`atlas.stages.classes.comparison_atlas` passes it); the viewer draws it as an axis.
        layer_set: the layers of a multi-layer run, in the model's order, written to the manifest
            as ``layer_set``; the viewer shows a row of them to switch between the run's layer atlases
            (``RUN/layers/<layer>/tiles``).
        aligned: one side of an aligned atlas, written to the manifest as ``aligned``
            (``{"name", "side": "a" | "b", "label", "peer": the other side's tiles folder relative to
            this one, "peer_label"}``); the viewer shows both sides with linked pan and zoom.
        overwrite: redraw a pyramid that was drawn with other settings; without it such a
            pyramid is left as it is and :class:`~atlas.store.common.SettingsChangedError` names
            the changed settings.

    Cells or icons made from inputs that changed since (e.g. cells binned from a layout that
    was laid out again later) are refused with :class:`~atlas.store.common.StaleInputError`,
    naming the stage to run first.

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
    check_out_dir(out)
    drawing = json.loads(json.dumps(asdict(settings), default=str))
    if not overwrite:
        check_drawing_settings(out, drawing)
    cattrs, levels = read_cells(cells_path)
    if class_names is None:
        from atlas.resources import imagenet_class_names

        class_names = imagenet_class_names()
    class_names = list(class_names)
    if not icons_path.is_file():
        raise TilesError(f"{icons_path} does not exist; run the render stage (`atlas render`) first")
    require_current(cells_path, icons_path)  # a stale chain: StaleInputError naming the stage to run first
    out.mkdir(parents=True, exist_ok=True)

    icon_ds, icon_size, icons_hash = read_icons(icons_path, cells_path, levels)
    pyr = plan_pyramid([lv.size for lv in levels], settings.tile_size, settings.cell_px or icon_size, settings.margin)
    global_hash = hashlib.blake2b(json.dumps({
        "format": TILES_FORMAT, "settings": asdict(settings), "pyramid": asdict(pyr),
        "cells": [cattrs.get("settings_hash"), [array_digest(lv.cell_id, lv.count) for lv in levels]],
        "icons": [icons_hash, icon_size],
    }, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
    state = load_state(out)
    if state.get("global") != global_hash:
        if state or (out / "manifest.json").exists():
            log.info("drawing settings or cells changed since the last build; redrawing every tile")
        clear_pyramid(out)
        state = {"global": global_hash}
    state["settings"] = drawing
    plans = plan_tiles(pyr, settings, levels, state.get("tiles", {}), int(global_hash, 16) & 0x7FFFFFFFFFFFFFFF)
    written = draw_tiles(out, pyr, settings, plans, icon_ds, state, progress)
    sprites_written = write_sprites(out, levels, icon_ds, icon_size, state, int(global_hash[:8], 16))

    thumbs_written = thumbs_failed = 0
    thumbs: set[int] | None = None
    acts_info: dict[str, str] | None = None
    if activations_path is not None:
        thumbs_written, thumbs_failed, thumbs, acts_info = write_thumbs(
            out, Path(activations_path), str(cattrs.get("layer", "")), levels, settings, state, progress)
    meta_written, level_entries, meta_digest = write_metadata(out, pyr, settings, levels, class_names, thumbs, icon_size)

    pending = int(sum((~lv.done).sum() for lv in levels))
    build = hashlib.blake2b(global_hash.encode(), digest_size=6)
    build.update(array_digest(*[p.hashes for p in plans], *[lv.digest for lv in levels]).encode() + meta_digest)
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
        "settings": drawing,
        "inputs": {
            "cells": {"settings_hash": str(cattrs.get("settings_hash", "")),
                      "settings_json": str(cattrs.get("settings_json", "")),
                      **_record(cells_path, out)},
            "icons": {"settings_hash": icons_hash, "icon_size": icon_size, **_record(icons_path, out)},
            "activations": None if acts_info is None else {**acts_info, **_record(Path(activations_path), out)},
        },
        "classes": class_names,
    }
    if comparison is not None:
        manifest["comparison"] = json.loads(json.dumps(dict(comparison)))
    if layer_set is not None:
        manifest["layer_set"] = [str(x) for x in layer_set]
    if aligned is not None:
        manifest["aligned"] = json.loads(json.dumps(dict(aligned)))
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    write_atomic(out / STATE_FILE, json.dumps(state).encode())
    summary = TilesSummary(
        out_dir=out, levels=tuple(pyr.sizes), max_zoom=pyr.max_zoom, tiles_total=sum(len(p.hashes) for p in plans),
        tiles_written=written, sprites_written=sprites_written, thumbs_written=thumbs_written, thumbs_failed=thumbs_failed,
        metadata_written=meta_written, cells_pending=pending, complete=pending == 0,
        cells_fallback=int(sum(((lv.fallback_size > 0) & ~lv.done).sum() for lv in levels)),
        seconds=time.perf_counter() - t0, build=manifest["build"],
    )
    log.info("%s", summary.describe())
    return summary


def _record(path: Path, out: Path) -> dict[str, str | None]:
    """Where an input is (relative to the tiles folder) and its identity (:mod:`atlas.store.lineage`)."""
    rec = input_record(path, out / "manifest.json")
    return {"path": rec["path"], "id": rec["id"]}


def check_drawing_settings(out: Path, drawing: dict) -> None:
    """Raise :class:`SettingsChangedError` when the pyramid in ``out`` was drawn with other settings
    (a pyramid of an older version, which did not record them, is redrawn as before)."""
    recorded = load_state(out).get("settings")
    if recorded is None:
        try:
            recorded = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("settings")
        except (OSError, ValueError, AttributeError):
            recorded = None
    if isinstance(recorded, dict):
        changes = settings_diff(recorded, drawing)
        if changes:
            raise SettingsChangedError(out, "tiles", changes)


__all__ = ["build_tiles", "check_drawing_settings", "TilesSummary"]
