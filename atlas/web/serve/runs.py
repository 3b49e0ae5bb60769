"""The atlases a server serves: tiles folders (with an ``atlas-tiles`` manifest) below a folder.

Each one carries ``warnings``: what is out of date about it (an input rebuilt since its tiles
were drawn, or cells made from a layout laid out again since; see
:func:`atlas.stages.tiles.metadata.manifest_warnings`). ``/api/runs`` lists them and the viewer shows
them; the server logs them when it starts. A comparison atlas also carries ``comparison``:
which class lies on which side (:func:`comparison_axis`), which the viewer draws as an axis.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from atlas.stages.tiles import MANIFEST_KIND
from atlas.stages.tiles.metadata import manifest_warnings

MAX_SCAN_DEPTH = 4


@dataclass(frozen=True)
class Run:
    """One served atlas: a tiles folder below the served root."""

    id: str
    path: Path  # resolved
    manifest: dict[str, Any]
    mtime_ns: int
    name: str  # the run's name: its folder's, see run_name()
    warnings: tuple[str, ...] = ()  # what is out of date (atlas.stages.tiles.metadata.manifest_warnings)

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": self.id,
            "name": self.name,
            "label": " · ".join(x for x in (self.name, m.get("layer", "")) if x),
            "title": m.get("title", ""),
            "model": m.get("model", ""),
            "layer": m.get("layer", ""),
            "complete": bool(m.get("complete", False)),
            "build": m.get("build", ""),
            "levels": [lv.get("size") for lv in m.get("levels", [])],
            "base": data_url(self.id, "/data/"),
            "warnings": list(self.warnings),
            "comparison": comparison_axis(m),
        }


def comparison_axis(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Which class a comparison atlas puts on which side, from its manifest's ``comparison``
    (written by :func:`atlas.stages.classes.comparison_atlas`): ``{"left": {"index", "name"},
    "right": {"index", "name"}, "x": what x is}``; None for any other atlas, for a comparison
    tiled before the manifest recorded it, and for a malformed entry."""
    entry = manifest.get("comparison")
    if not isinstance(entry, dict):
        return None
    sides = {}
    for side in ("left", "right"):
        cls = entry.get(side)
        if not isinstance(cls, dict) or not isinstance(cls.get("name"), str) or not cls["name"]:
            return None
        index = cls.get("index")
        sides[side] = {"index": index if isinstance(index, int) and not isinstance(index, bool) else None,
                       "name": cls["name"]}
    x = entry.get("x")
    return {**sides, "x": x if isinstance(x, str) and x else "attribution difference"}


def data_url(run_id: str, prefix: str) -> str:
    """The URL of a run's files: ``prefix`` and the run id, percent-encoded segment by segment
    (a folder named ``a #1?`` is ``a%20%231%3F``), with a closing ``/``."""
    return prefix + quote(run_id, safe="/") + "/"


def run_name(root: Path, tiles_dir: Path) -> str:
    """The name a tiles folder is shown by: its run folder's (the folder holding ``tiles/``).

    ``runA/tiles`` -> ``runA``; serving a run folder ``demo`` (or ``demo/tiles`` itself) ->
    ``demo``; a tiles folder by another name keeps its own.
    """
    folder = tiles_dir.parent if tiles_dir.name == "tiles" else tiles_dir
    if root in folder.parents:
        return folder.relative_to(root).as_posix()
    return folder.name or "atlas"


def ordered_runs(runs: dict[str, Run]) -> list[tuple[str, Run]]:
    """Shallowest first, then by name: a run's own atlas (``tiles``) before its class and
    comparison atlases (``classes/<name>/tiles``), so a viewer opening the first one shows it."""
    return sorted(runs.items(), key=lambda kv: (kv[0].count("/"), kv[0]))


def find_runs(root: Path, max_depth: int = MAX_SCAN_DEPTH) -> dict[str, Run]:
    """Tiles folders (with an ``atlas-tiles`` manifest) at most ``max_depth`` levels below ``root``.

    Folders whose real path leaves ``root`` (symlinks out) and hidden folders are skipped; the
    search does not descend into a tiles folder.
    """
    root = root.resolve()
    runs: dict[str, Run] = {}

    def visit(folder: Path, depth: int) -> None:
        manifest_path = folder / "manifest.json"
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                manifest = None
            if isinstance(manifest, dict) and manifest.get("kind") == MANIFEST_KIND:
                real = folder.resolve()
                if real == root or root in real.parents:
                    rel = real.relative_to(root).as_posix()
                    if rel == ".":  # the served folder is itself a tiles folder
                        rel = root.name if root.name and not root.name.startswith(".") else "atlas"
                    runs[rel] = Run(rel, real, manifest, manifest_path.stat().st_mtime_ns, run_name(root, real),
                                    tuple(manifest_warnings(real, manifest)))
                return
        if depth >= max_depth:
            return
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in children:
            if entry.name.startswith(".") or entry.name.isdigit() or entry.name in ("thumbs", "icons", "meta"):
                continue
            try:
                if not entry.is_dir():
                    continue
                real = Path(entry.path).resolve()
            except OSError:
                continue
            if root in real.parents:
                visit(Path(entry.path), depth + 1)

    visit(root, 0)
    return runs


__all__ = ["MAX_SCAN_DEPTH", "Run", "comparison_axis", "data_url", "find_runs", "run_name"]
