"""The neighbourhoods an attack chose, placed on a comparison atlas (``/api/attacks``).

``atlas attack RUN --source S --target T`` writes ``RUN/attacks/<S>-to-<T>/report.json`` (best-of
protocol) or ``protocol.json`` (``--protocol article``) whose ``candidates`` name cells of the
run's main grid: ``{"cell": [level, iy, ix], "score", "count", "classes"}`` (a list, or a dict
kind -> list with kinds ``target`` and ``third``). The comparison atlas of the same two classes,
``RUN/compare/<a>--<b>/``, lays out rows of the same activations (its ``layout.h5`` holds their
row ids), so a cell of the main grid is found on it through its rows: the main layout places
every row, :func:`~atlas.stages.grid.grid_cells` bins it at the report's level, and the rows of the
cell that the comparison lays out give the mark's centroid, bounding box and radius there.

A cell none of whose rows is on the comparison (typical for a third-class cell: its rows are
attributed to neither class) is listed in ``off_map``, not drawn. Reports of other class pairs,
and the random-cell controls, are left out. Only files under the served folder are read; every
HDF5 read goes through :mod:`atlas.store`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlas.web.serve.runs import Run, comparison_axis

log = logging.getLogger("atlas.web.serve")

#: the report files of an attack folder and the protocol each one is written by
REPORT_FILES = (("report.json", "best"), ("protocol.json", "article"))
#: the kinds of chosen neighbourhoods that are marked (the random-cell controls are not)
MARK_KINDS = ("target", "third")
#: what a mark's ``success`` is
SUCCESS = ("share of the held-out source photos whose top-1 becomes the target with the patch "
           "(best corner and size per photo)")
MAX_REPORT_BYTES = 64 << 20
MAX_FOLDERS = 256
MAX_LEVEL = 4096  # the grid stage's largest size (atlas.stages.grid.MAX_GRID_SIZE)


@dataclass(frozen=True)
class ReportFile:
    """One report of an attack folder: where, which protocol, and its (mtime, size) for caching."""

    path: Path
    folder: str  # the attack folder's name
    protocol: str  # "best" or "article"
    stamp: tuple[int, int]


def comparison_folders(run: Run, root: Path) -> tuple[Path, Path] | None:
    """``(comparison folder, run folder)`` of a comparison atlas served from ``root``: its tiles
    are ``RUN/compare/<a>--<b>/tiles``; None when the atlas is laid out otherwise or its run
    folder is not under ``root`` (nothing outside the served folder is read)."""
    folder = run.path.parent
    run_dir = folder.parent.parent
    if run.path.name != "tiles" or folder.parent.name != "compare":
        return None
    if run_dir != root and root not in run_dir.parents:
        return None
    return folder, run_dir


def report_files(run_dir: Path, root: Path) -> list[ReportFile]:
    """The report files of ``run_dir/attacks/*/``, sorted by folder; hidden folders, and folders
    or files whose real path leaves ``root``, are skipped."""
    attacks = run_dir / "attacks"
    try:
        entries = sorted(os.scandir(attacks), key=lambda e: e.name)[:MAX_FOLDERS]
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        for name, protocol in REPORT_FILES:
            try:
                real = (Path(entry.path) / name).resolve(strict=True)
                st = real.stat()
            except (OSError, RuntimeError):
                continue
            if root in real.parents and real.is_file():
                found.append(ReportFile(real, entry.name, protocol, (st.st_mtime_ns, st.st_size)))
    return found


def _same_class(name: Any, index: Any, side: dict[str, Any]) -> bool:
    if isinstance(index, int) and side["index"] is not None:
        return index == side["index"]
    return isinstance(name, str) and name.strip().lower() == side["name"].strip().lower()


def _pair(doc: dict[str, Any], axis: dict[str, Any]) -> bool:
    """Whether a report's {source, target} is the comparison's {left, right} (either direction)."""
    s = (doc.get("source"), doc.get("source_index"))
    t = (doc.get("target"), doc.get("target_index"))
    left, right = axis["left"], axis["right"]
    return ((_same_class(*s, left) and _same_class(*t, right))
            or (_same_class(*s, right) and _same_class(*t, left)))


def _member_rates(family: Any, chosen_only: bool) -> dict[str, float]:
    """``{member name: success}`` of a report's family: every member's (article protocol,
    ``per_patch_dynamic``), or only the chosen one's (best-of protocol, ``dynamic_any_size``)."""
    if not isinstance(family, dict) or not isinstance(family.get("members"), list):
        return {}
    members = family["members"]
    if chosen_only:
        k, rate = family.get("chosen"), family.get("dynamic_any_size")
        ok = isinstance(k, int) and 0 <= k < len(members) and isinstance(rate, (int, float))
        return {str(members[k]): float(rate)} if ok else {}
    rates = family.get("per_patch_dynamic")
    if not isinstance(rates, list):
        return {}
    return {str(m): float(r) for m, r in zip(members, rates) if isinstance(r, (int, float))}


def _candidates(doc: dict[str, Any], protocol: str) -> Iterator[tuple[str, dict[str, Any], float | None]]:
    """``(kind, candidate, success or None)`` of every chosen neighbourhood of a report."""
    cands = doc.get("candidates")
    families = doc.get("families") if isinstance(doc.get("families"), dict) else {}
    if protocol == "best":
        settings = doc.get("settings") if isinstance(doc.get("settings"), dict) else {}
        kind = settings.get("kind") if settings.get("kind") in MARK_KINDS else "target"
        by_kind = {kind: (cands, _member_rates(families.get("atlas"), chosen_only=True))}
    else:
        cands = cands if isinstance(cands, dict) else {}
        by_kind = {k: (cands[k], _member_rates(families.get(k), chosen_only=False)) for k in cands if k in MARK_KINDS}
    for kind, (items, rates) in by_kind.items():
        for c in items if isinstance(items, list) else []:
            if not isinstance(c, dict):
                continue
            cell = c.get("cell")
            if not (isinstance(cell, list) and len(cell) == 3 and all(isinstance(v, int) for v in cell)):
                continue
            size, iy, ix = cell
            if not (1 <= size <= MAX_LEVEL and 0 <= iy < size and 0 <= ix < size):
                continue
            yield kind, c, rates.get(f"cell {size}:{iy},{ix}")


def _text(value: Any, limit: int = 200) -> str:
    return str(value)[:limit] if value is not None else ""


class _Rows:
    """The two layouts, read once: the main grid cell of every comparison row at a level."""

    def __init__(self, comparison_layout: Path, main_layout: Path):
        from atlas.store.layout import read_layout

        comp = read_layout(comparison_layout)
        main = read_layout(main_layout)
        ok = comp.valid & np.isfinite(comp.xy).all(axis=1)
        self.xy = comp.xy[ok].astype(np.float64)
        rows = comp.row_ids[ok]
        # where each comparison row is in the main layout (-1: not laid out there)
        order = np.argsort(main.row_ids, kind="stable")
        sorted_ids = main.row_ids[order]
        at = np.clip(np.searchsorted(sorted_ids, rows), 0, max(len(sorted_ids) - 1, 0))
        found = (sorted_ids[at] == rows) if len(sorted_ids) else np.zeros(len(rows), bool)
        index = np.where(found, order[at] if len(order) else 0, -1)
        main_ok = main.valid & np.isfinite(main.xy).all(axis=1)
        self.main_xy = np.clip(main.xy[main_ok], 0.0, 1.0)
        self.main_pos = np.full(len(main.row_ids), -1, np.int64)  # main layout index -> index among main_ok
        self.main_pos[main_ok] = np.arange(int(main_ok.sum()))
        self.index = np.where(index >= 0, self.main_pos[np.maximum(index, 0)], -1)
        self._levels: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def level(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(main cell of every comparison row (-1: none), rows of every main cell)`` at ``size``."""
        if size not in self._levels:
            from atlas.stages.grid import grid_cells

            ids = grid_cells(self.main_xy, size)
            per_cell = np.bincount(ids, minlength=size * size)
            comp_cells = np.where(self.index >= 0, ids[np.maximum(self.index, 0)] if len(ids) else -1, -1)
            self._levels[size] = (comp_cells, per_cell)
        return self._levels[size]


def attack_marks(run: Run, root: Path, files: list[ReportFile] | None = None) -> dict[str, Any]:
    """Where the neighbourhoods of the attack reports of a comparison atlas's class pair lie on it.

    Returns ``{"run", "comparison", "reports", "marks", "off_map", "skipped", "success"}``: each
    report read (``folder``, ``file``, ``protocol``, ``source``, ``target``, ``level``); a mark per
    chosen cell holding rows of the comparison (``report``, ``kind``, ``cell`` [level, iy, ix],
    ``classes``, ``score``, ``success`` or null, ``rows`` on the comparison, ``cell_rows`` in the
    main grid, ``center`` [x, y], ``bbox`` [x0, y0, x1, y1] and ``radius`` (root-mean-square
    distance to the centre), in the comparison layout's [0, 1] coordinates); the same without
    a position in ``off_map`` for the others; and ``skipped``: the reports that could not be read.
    ``root`` is the served folder; ``files`` the reports (default: :func:`report_files`).
    """
    axis = comparison_axis(run.manifest)
    out: dict[str, Any] = {"run": run.id, "comparison": axis, "reports": [], "marks": [], "off_map": [],
                           "skipped": [], "success": SUCCESS}
    where = comparison_folders(run, root)
    if axis is None:
        return out
    if where is None:
        out["note"] = ("this comparison atlas's run folder (the one holding attacks/) is not the served folder "
                       "or under it; serve the run folder to see its attacks")
        return out
    folder, run_dir = where
    if files is None:
        files = report_files(run_dir, root)
    rows: _Rows | None = None
    for rf in files:
        name = f"{rf.folder}/{rf.path.name}"
        try:
            if rf.stamp[1] > MAX_REPORT_BYTES:
                raise ValueError(f"larger than {MAX_REPORT_BYTES >> 20} MB")
            doc = json.loads(rf.path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            out["skipped"].append({"report": name, "reason": _text(e)})
            continue
        if not _pair(doc, axis):
            continue
        cands = list(_candidates(doc, rf.protocol))
        out["reports"].append({"report": name, "folder": rf.folder, "file": rf.path.name, "protocol": rf.protocol,
                               "source": _text(doc.get("source")), "target": _text(doc.get("target")),
                               "level": doc.get("level") if isinstance(doc.get("level"), int) else None,
                               "cells": len(cands)})
        if not cands:
            continue
        if rows is None:
            try:
                rows = _Rows(folder / "layout.h5", run_dir / "layout.h5")
            except (OSError, ValueError, KeyError) as e:
                out["reports"].pop()
                out["skipped"].append({"report": name, "reason": f"the layouts cannot be read: {_text(e)}"})
                continue
        for kind, c, success in cands:
            size, iy, ix = c["cell"]
            comp_cells, per_cell = rows.level(size)
            members = np.flatnonzero(comp_cells == iy * size + ix)
            mark: dict[str, Any] = {
                "report": name, "source": _text(doc.get("source")), "target": _text(doc.get("target")),
                "kind": kind, "cell": [size, iy, ix], "cell_id": iy * size + ix,
                "classes": [_text(k) for k in c.get("classes", [])[:5]] if isinstance(c.get("classes"), list) else [],
                "score": float(c["score"]) if isinstance(c.get("score"), (int, float)) else None,
                "success": success, "rows": int(len(members)), "cell_rows": int(per_cell[iy * size + ix]),
            }
            if len(members) == 0:
                mark["reason"] = ("no row of this cell is on this comparison atlas" if mark["cell_rows"]
                                  else "this cell of the main grid holds no row")
                out["off_map"].append(mark)
                continue
            xy = rows.xy[members]
            center = xy.mean(axis=0)
            mark.update(center=[round(float(v), 6) for v in center],
                        bbox=[round(float(v), 6) for v in (*xy.min(axis=0), *xy.max(axis=0))],
                        radius=round(float(np.sqrt(((xy - center) ** 2).sum(axis=1).mean())), 6))
            out["marks"].append(mark)
    return out


__all__ = ["MARK_KINDS", "REPORT_FILES", "SUCCESS", "ReportFile", "attack_marks", "comparison_folders",
           "report_files"]
