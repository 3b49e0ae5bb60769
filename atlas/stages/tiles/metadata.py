"""Metadata: per-region cell documents (``meta/{size}/{ry}-{rx}.json``), sprite references, the manifest reader."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from atlas.stages.tiles.files import write_if_changed
from atlas.stages.tiles.inputs import Level
from atlas.stages.tiles.pyramid import Pyramid
from atlas.stages.tiles.settings import MANIFEST_KIND, TilesError, TileSettings
from atlas.stages.tiles.thumbs import thumb_url

log = logging.getLogger("atlas.stages.tiles")


def round_sig(values: np.ndarray, digits: int = 4) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    mag = np.floor(np.log10(np.abs(np.where(values == 0, 1, values))))
    factor = 10.0 ** (digits - 1 - mag)
    return (np.round(values * factor) / factor).tolist()


def sprite_cells(icon_size: int) -> int:
    """Cells per side of an icon sprite sheet: sheets of at most 512 px, 1 to 16 cells a side."""
    return max(1, min(16, 512 // max(1, icon_size)))


def icon_ref(level: Level, i: int, icon_size: int) -> dict[str, Any] | None:
    """Where the icon of cell row ``i`` lies: its sprite sheet and pixel box in it."""
    if not level.done[i]:
        return None
    k = sprite_cells(icon_size)
    iy, ix = int(level.coords[i, 0]), int(level.coords[i, 1])
    return {"sprite": f"icons/{level.size}/{iy // k}-{ix // k}.jpg", "x": (ix % k) * icon_size,
            "y": (iy % k) * icon_size, "size": icon_size, "sprite_px": k * icon_size}


def fallback_ref(level: Level, i: int, coarser: Mapping[int, Level], icon_size: int) -> dict[str, Any] | None:
    """The ancestor whose icon a cell not rendered yet shows (``Level.fallback_size``): its grid,
    cell and icon; None for a rendered cell or one without a rendered ancestor."""
    size = int(level.fallback_size[i]) if len(level.fallback_size) else 0
    if level.done[i] or not size or size not in coarser:
        return None
    up, row = coarser[size], int(level.fallback_row[i])
    return {"size": size, "iy": int(up.coords[row, 0]), "ix": int(up.coords[row, 1]),
            "icon": icon_ref(up, row, icon_size)}


def region_files(
    level: Level, settings: TileSettings, class_names: list[str], thumbs: set[int] | None, icon_size: int,
    coarser: Mapping[int, Level] | None = None,
) -> dict[tuple[int, int], bytes]:
    """Per-region JSON documents of one level (cells in row-major order); ``coarser``: the other
    levels by size, for the ancestors whose icons stand in for cells not rendered yet."""
    r = settings.region
    region = level.coords // r
    key = region[:, 0] * 1_000_000 + region[:, 1]
    order = np.lexsort((level.cell_id, key))
    e = settings.examples_per_cell
    k = level.top_classes.shape[1]
    top_c = level.top_classes.tolist()
    top_v = round_sig(level.top_values) if k else [[] for _ in range(len(level.cell_id))]
    ex_img = level.example_images[:, :e].tolist()
    ex_row = level.example_rows[:, :e].tolist()
    center = round_sig(level.center.reshape(-1), 5)
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
            "thumbs": [thumb_url(row) if thumbs is not None and row in thumbs else None for row in rows],
            "icon": icon_ref(level, i, icon_size),
        }
        fallback = fallback_ref(level, i, coarser or {}, icon_size)
        if fallback is not None:
            cell["fallback"] = fallback
        out.setdefault((iy // r, ix // r), []).append(cell)
    docs = {}
    for (ry, rx), cells in out.items():
        used = sorted({c for cell in cells for c, _v in cell["top"]})
        names = {str(c): (class_names[c] if c < len(class_names) else f"class {c}") for c in used}
        doc = {"level": level.size, "region": [ry, rx], "region_size": r, "names": names, "cells": cells}
        docs[(ry, rx)] = json.dumps(doc, separators=(",", ":")).encode()
    return docs


def write_metadata(
    out: Path, pyr: Pyramid, settings: TileSettings, levels: list[Level], class_names: list[str],
    thumbs: set[int] | None, icon_size: int,
) -> tuple[int, list[dict[str, Any]], bytes]:
    """Region files of every level (rewritten only when changed); returns (written, manifest entries, digest)."""
    written = 0
    digest = hashlib.blake2b(digest_size=8)
    entries = []
    by_size = {lv.size: lv for lv in levels}
    for level in levels:
        docs = region_files(level, settings, class_names, thumbs, icon_size, by_size)
        folder = out / "meta" / str(level.size)
        for (ry, rx), data in sorted(docs.items()):
            digest.update(data)
            written += write_if_changed(folder / f"{ry}-{rx}.json", data)
        entries.append({
            "size": level.size,
            "min_count": level.min_count,
            "native_zoom": round(pyr.native_zoom(level.size), 4),
            "zooms": [z for z in range(pyr.max_zoom + 1) if pyr.zoom_levels[z] == level.size],
            "n_cells": int(len(level.cell_id)),
            "n_done": int(level.done.sum()),
            # cells not rendered that show an ancestor's icon, by the ancestor's grid size
            "fallbacks": {str(int(s)): int(n) for s, n in zip(*np.unique(
                level.fallback_size[~level.done & (level.fallback_size > 0)], return_counts=True))}
            if len(level.fallback_size) else {},
            "count_total": int(level.count.sum()),
            "count_max": int(level.count.max()) if len(level.count) else 0,
            "region": settings.region,
            "regions": sorted([list(k) for k in docs]),
            "meta_url": f"meta/{level.size}/{{ry}}-{{rx}}.json",
            "sprite_url": f"icons/{level.size}/{{sy}}-{{sx}}.jpg",
            "sprite_cells": sprite_cells(icon_size),
        })
    return written, entries, digest.digest()


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


def manifest_warnings(tiles_dir: str | os.PathLike, manifest: dict[str, Any]) -> list[str]:
    """What is out of date about a built pyramid: inputs (cells, icons, activations) that changed
    since it was built, and inputs made from files that changed since them (see
    :mod:`atlas.store.lineage`). Manifests of older versions record no identities; their run
    folder's files are then compared by settings hash."""
    from atlas.store.lineage import chain_problems, compare_input, root_attrs

    tiles_dir = Path(tiles_dir)
    inputs = manifest.get("inputs") if isinstance(manifest.get("inputs"), dict) else {}
    out: list[str] = []
    found: list[Path] = []
    for name in ("cells", "icons", "activations"):
        entry = inputs.get(name)
        if not isinstance(entry, dict):
            continue
        recorded = isinstance(entry.get("path"), str)
        path = tiles_dir / entry["path"] if recorded else tiles_dir.parent / f"{name}.h5"
        if not path.is_file():
            path = tiles_dir.parent / path.name
        now = root_attrs(path)
        if now is None:
            continue
        found.append(path)
        if recorded:
            state = compare_input({"id": entry.get("id"), "settings_hash": entry.get("settings_hash")}, now)
        else:
            state = compare_input(None, now, entry.get("settings_hash"))
        if state == "changed":
            out.append(f"{path.name} changed since these tiles were built; run `atlas tiles` again")
    for path in found:
        problems, unknown = chain_problems(path)
        out += [p for p in problems if p not in out]
        for u in unknown:  # older files: the stages warn when they read them; the viewer does not nag
            log.debug("%s", u)
    return out


__all__ = ["fallback_ref", "icon_ref", "manifest_warnings", "read_manifest", "region_files", "round_sig", "sprite_cells",
           "write_metadata"]
