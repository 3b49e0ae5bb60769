"""The atlases a server serves: tiles folders (with an ``atlas-tiles`` manifest) below a folder.

Each one carries ``warnings``: what is out of date about it (an input rebuilt since its tiles
were drawn, or cells made from a layout laid out again since; see
:func:`atlas.stages.tiles.metadata.manifest_warnings`). ``/api/runs`` lists them and the viewer shows
them; the server logs them when it starts. A comparison atlas also carries ``comparison``:
which class lies on which side (:func:`comparison_axis`), which the viewer draws as an axis.

A multi-layer run keeps one atlas per layer (``RUN/layers/<layer>/tiles``), each manifest naming
the run's layers (``layer_set``); their entries carry ``layers`` (:func:`layer_row`), the row of
layers the viewer switches between. An aligned atlas has two sides sharing one layout
(``RUN/aligned/<name>/a/tiles`` and ``.../b/tiles``); each side's entry carries ``aligned``
(:func:`aligned_pair`), with its peer's id, and the viewer shows both side by side.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from atlas.stages.tiles import MANIFEST_KIND
from atlas.stages.tiles.metadata import manifest_warnings

#: how deep below the served folder tiles folders are looked for: ``RUN/aligned/<name>/a/tiles``
#: is 5 folders below a folder of runs
MAX_SCAN_DEPTH = 5
#: the id of a layer atlas of a multi-layer run: ``<group>/layers/<layer>/tiles`` (no group when
#: the run folder itself is served)
_LAYER_ID = re.compile(r"(?:(?P<group>.+)/)?layers/(?P<layer>[^/]+)/tiles")


@dataclass(frozen=True)
class Run:
    """One served atlas: a tiles folder below the served root."""

    id: str
    path: Path  # resolved
    manifest: dict[str, Any]
    mtime_ns: int
    name: str  # the run's name: its folder's, see run_name()
    warnings: tuple[str, ...] = ()  # what is out of date (atlas.stages.tiles.metadata.manifest_warnings)

    def describe(self, runs: Mapping[str, Run] | None = None) -> dict[str, Any]:
        """The run's entry in ``/api/runs``; ``runs`` (every served atlas, by id) resolves the ids
        of its sibling layer atlases and of its aligned peer, which are missing without it."""
        m = self.manifest
        runs = runs if runs is not None else {self.id: self}
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
            "layers": layer_row(self, runs),
            "aligned": aligned_pair(self, runs),
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


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and "/" not in value and "\0" not in value


def layer_row(run: Run, runs: Mapping[str, Run]) -> dict[str, Any] | None:
    """The layers of the multi-layer run a layer atlas (``<group>/layers/<layer>/tiles``) belongs
    to, from its manifest's ``layer_set``: ``{"group", "names": the layers in the model's order,
    "ids": {layer: the id of its atlas}}`` (only the layers whose atlas is served, ``runs``); None
    for any other atlas and for a malformed ``layer_set``."""
    names = run.manifest.get("layer_set")
    match = _LAYER_ID.fullmatch(run.id)
    if match is None or not isinstance(names, list) or not names or not all(_name(n) for n in names):
        return None
    names = list(dict.fromkeys(names))
    group = match["group"] or ""
    prefix = f"{group}/layers/" if group else "layers/"
    ids = {n: f"{prefix}{n}/tiles" for n in names if f"{prefix}{n}/tiles" in runs}
    return {"group": group, "names": names, "ids": ids}


def aligned_pair(run: Run, runs: Mapping[str, Run]) -> dict[str, Any] | None:
    """One side of an aligned atlas, from its manifest's ``aligned``: ``{"name", "side": "a" |
    "b", "label", "peer_id": the id of the other side's atlas (its ``peer`` folder, relative to
    this tiles folder; None when it is not served), "peer_label"}``; None for any other atlas and
    for a malformed entry."""
    entry = run.manifest.get("aligned")
    if not isinstance(entry, dict):
        return None
    name, side, peer = entry.get("name"), entry.get("side"), entry.get("peer")
    if not isinstance(name, str) or not name or side not in ("a", "b"):
        return None
    peer_id = None
    if isinstance(peer, str) and 0 < len(peer) <= 1000 and "\0" not in peer:
        try:
            target = (run.path / peer).resolve()
        except (OSError, RuntimeError, ValueError):
            target = None
        peer_id = next((r.id for r in runs.values() if r.path == target and r.id != run.id), None)

    def text(key: str) -> str:
        value = entry.get(key)
        return value if isinstance(value, str) else ""

    return {"name": name, "side": side, "label": text("label") or side, "peer_id": peer_id,
            "peer_label": text("peer_label") or ("b" if side == "a" else "a")}


def data_url(run_id: str, prefix: str) -> str:
    """The URL of a run's files: ``prefix`` and the run id, percent-encoded segment by segment
    (a folder named ``a #1?`` is ``a%20%231%3F``), with a closing ``/``."""
    return prefix + quote(run_id, safe="/") + "/"


def run_name(root: Path, tiles_dir: Path) -> str:
    """The name a tiles folder is shown by: its run folder's (the folder holding ``tiles/``).

    ``runA/tiles`` -> ``runA``; serving a run folder ``demo`` (or ``demo/tiles`` itself) ->
    ``demo``; a tiles folder by another name keeps its own. A layer atlas of a multi-layer run
    (``runA/layers/<layer>/tiles``) and a side of an aligned atlas (``runA/aligned/<name>/a/tiles``)
    are shown by their run's name, ``runA``.
    """
    folder = tiles_dir.parent if tiles_dir.name == "tiles" else tiles_dir
    if tiles_dir.name == "tiles" and folder.parent.name == "layers":
        folder = folder.parent.parent
    elif tiles_dir.name == "tiles" and folder.name in ("a", "b") and folder.parent.parent.name == "aligned":
        folder = folder.parent.parent.parent
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


__all__ = ["MAX_SCAN_DEPTH", "Run", "aligned_pair", "comparison_axis", "data_url", "find_runs", "layer_row",
           "run_name"]
