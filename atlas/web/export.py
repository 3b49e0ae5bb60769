"""Export: an atlas as a self-contained static site that any static file host can serve.

``atlas export RUN DIR`` writes::

    DIR/index.html                 the viewer (the same page `atlas serve` sends)
    DIR/static/...                 its script, style sheet and the vendored Leaflet
    DIR/atlas.json                 the atlases, with "api": false (the viewer then reads files only)
    DIR/data/<run>/...             each tiles folder: manifest.json, {z}/{x}/{y} tiles, meta/
                                   (per-cell metadata: hover and the click panel), icons/ (sprites),
                                   thumbs/ (dataset examples), overlays/ (photos placed by
                                   `atlas explain --atlas`; overlays/index.json always present)
    DIR/data/<run>/classes/<index>.json   per class, the highlight `atlas serve` computes for
                                   /api/class (:func:`atlas.web.serve.api.class_highlight`, every level)
    DIR/data/<run>/classes/index.json     the class indices that have a file
    DIR/data/<run>/attacks.json    a comparison atlas: where the cells `atlas attack` chose for its
                                   two classes lie on it, as `atlas serve` answers /api/attacks
                                   (:func:`atlas.web.serve.attacks.attack_marks`)

Nothing of atlas runs where the site is hosted: ``python -m http.server -d DIR`` (or any web
server, or object storage) serves it, at any path. A static host sends no security headers, so
every page of the site (the viewer, channel views) carries the content security policy that
``atlas serve`` sends, in a ``<meta http-equiv="Content-Security-Policy">`` tag: scripts,
styles, images and fetches from the site only, no inline script. Run folders are named in
URLs percent-encoded (``base`` in ``atlas.json``). Only files a server would serve are copied:
hidden files (the tiles' ``.state.json``), unknown extensions and symlinks that lead out of the
tiles folder are left out. The site is written beside ``DIR`` and renamed into place, so an
interrupted export leaves no half site.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas.web.serve.api import channel_view_entries, class_highlight, level_attribution, overlay_entries, read_region
from atlas.web.serve.attacks import attack_marks
from atlas.web.serve.files import CONTENT_TYPES, CSP_META, VIEWER_DIR
from atlas.web.serve.runs import MAX_SCAN_DEPTH, Run, comparison_axis, data_url, find_runs, ordered_runs

log = logging.getLogger(__name__)

EXPORT_KIND = "atlas-export"


@dataclass
class ExportSummary:
    """What an export wrote: the site folder, its atlases, file count and bytes by part."""

    out_dir: Path
    runs: list[str]
    files: int = 0
    bytes_by_part: dict[str, int] = field(default_factory=dict)
    classes: int = 0
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_part.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {_mb(v)}" for k, v in sorted(self.bytes_by_part.items(), key=lambda kv: -kv[1]))
        return (f"exported {len(self.runs)} atlas{'es' if len(self.runs) != 1 else ''} ({', '.join(self.runs)}) "
                f"to {self.out_dir}: {self.files} files, {_mb(self.bytes)} ({parts}); highlight files for "
                f"{self.classes} classes; {self.seconds:.1f} s. Serve it with any static file server, e.g. "
                f"`python -m http.server -d {self.out_dir}`")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n / 1e3:.1f} kB"


def _part(rel: Path) -> str:
    """The summary bucket of a file of a tiles folder: tiles, meta, icons, thumbs, classes, ..."""
    head = rel.parts[0]
    return "tiles" if head.isdigit() else head if len(rel.parts) > 1 else "manifest"


_HEAD = re.compile(rb"<head(?:\s[^>]*)?>", re.IGNORECASE)
_DOCTYPE = re.compile(rb"\s*<!doctype[^>]*>", re.IGNORECASE)
_CSP_TAG = f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP_META, quote=False)}">'.encode()


def _with_csp(page: bytes) -> bytes:
    """An HTML page with :data:`~atlas.web.serve.files.CSP_META` in a ``<meta>`` tag at the top of
    its head (before anything it governs); a page without a head gets it first (after its doctype)."""
    match = _HEAD.search(page) or _DOCTYPE.match(page)
    at = match.end() if match else 0
    return page[:at] + _CSP_TAG + page[at:]


def _publish(src: Path, target: Path) -> None:
    """Copy a file into the site; an HTML page gets the content security policy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() == ".html":
        target.write_bytes(_with_csp(src.read_bytes()))
    else:
        shutil.copyfile(src, target)


def _copy_tiles(run: Run, dest: Path, summary: ExportSummary) -> None:
    root = run.path
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            src = Path(folder) / name
            if name.startswith(".") or src.suffix.lower() not in CONTENT_TYPES:
                continue
            real = src.resolve()
            if root not in real.parents:  # a symlink out of the tiles folder: never published
                log.warning("not exporting %s: it leads out of %s", src, root)
                continue
            rel = src.relative_to(root)
            if rel.as_posix() in ("overlays/index.json", "channels/index.json"):  # rewritten from their valid entries
                continue
            target = dest / rel
            _publish(real, target)
            summary.files += 1
            part = _part(rel)
            summary.bytes_by_part[part] = summary.bytes_by_part.get(part, 0) + target.stat().st_size


def _write_json(path: Path, doc: Any, summary: ExportSummary, part: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    summary.files += 1
    summary.bytes_by_part[part] = summary.bytes_by_part.get(part, 0) + path.stat().st_size


def _write_classes(run: Run, dest: Path, summary: ExportSummary) -> int:
    """Per class with any positive cell: the highlight of every level. Returns the class count."""
    levels = list(run.manifest.get("levels", []))
    names = list(run.manifest.get("classes", []))
    by_level = {
        str(lv["size"]): level_attribution(read_region(run, lv, ry, rx) for ry, rx in lv.get("regions", []))
        for lv in levels
    }
    present = sorted({c for attribution in by_level.values() for c in attribution})
    written = []
    for c in present:
        highlight = {size: class_highlight(attribution, c) for size, attribution in by_level.items()}
        if not any(h["cells"] for h in highlight.values()):
            continue
        name = names[c] if c < len(names) else f"class {c}"
        _write_json(dest / "classes" / f"{c}.json", {"class": {"index": c, "name": name}, "levels": highlight},
                    summary, "classes")
        written.append(c)
    _write_json(dest / "classes" / "index.json", {"classes": written}, summary, "classes")
    return len(written)


def _copy_viewer(out: Path, summary: ExportSummary) -> None:
    for src in sorted(VIEWER_DIR.rglob("*")):
        if not src.is_file() or src.name.startswith(".") or src.suffix.lower() not in CONTENT_TYPES:
            continue
        rel = src.relative_to(VIEWER_DIR)
        target = out / rel if rel.as_posix() == "index.html" else out / "static" / rel
        _publish(src, target)
        summary.files += 1
        summary.bytes_by_part["viewer"] = summary.bytes_by_part.get("viewer", 0) + target.stat().st_size


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder for the site")
    if not any(out.iterdir()):
        return
    marker = out / "atlas.json"
    is_export = False
    try:
        is_export = json.loads(marker.read_text(encoding="utf-8")).get("kind") == EXPORT_KIND
    except (OSError, ValueError, AttributeError):
        pass
    if not is_export:
        raise ValueError(f"{out} is not empty and holds no atlas export; give a new or empty folder")
    if not overwrite:
        raise ValueError(f"{out} already holds an export; pass --overwrite to replace it")


def export_site(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> ExportSummary:
    """Write the atlases under ``run_dir`` as a static site into ``out_dir`` (see the module docs).

    Args:
        run_dir: a run folder (holding ``tiles/``), a tiles folder, or a folder of runs, as for
            :func:`atlas.web.serve.serve`.
        out_dir: the site folder: new, empty, or an earlier export (with ``overwrite``).
        overwrite: replace an earlier export in ``out_dir``.

    Raises ``ValueError`` when ``run_dir`` holds no tiles or ``out_dir`` holds something else.
    """
    t0 = time.monotonic()
    root = Path(run_dir)
    if not root.is_dir():
        raise ValueError(f"{run_dir} is not a folder; give a run folder (holding tiles/) or a folder of runs")
    runs = find_runs(root)
    if not runs:
        raise ValueError(f"no atlas tiles under {run_dir} (searched {MAX_SCAN_DEPTH} folders deep for "
                         f"tiles/manifest.json); build them with `atlas tiles {run_dir}`")
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    summary = ExportSummary(out_dir=out, runs=[run.name for run in runs.values()])
    try:
        partial.mkdir()
        _copy_viewer(partial, summary)
        described = []
        for run_id, run in ordered_runs(runs):
            dest = partial / "data" / run_id
            _copy_tiles(run, dest, summary)
            summary.classes += _write_classes(run, dest, summary)
            _write_json(dest / "overlays" / "index.json", {"kind": "atlas-overlays", "overlays": overlay_entries(run)},
                        summary, "overlays")
            _write_json(dest / "channels" / "index.json", {"views": channel_view_entries(run)}, summary, "channels")
            if comparison_axis(run.manifest) is not None:
                _write_json(dest / "attacks.json", attack_marks(run, root.resolve()), summary, "attacks")
            described.append({**run.describe(runs), "base": data_url(run_id, "data/")})
        _write_json(partial / "atlas.json", {"kind": EXPORT_KIND, "api": False, "runs": described}, summary, "manifest")
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    summary.seconds = time.monotonic() - t0
    log.debug("%s", summary.describe())
    return summary


__all__ = ["EXPORT_KIND", "ExportSummary", "export_site"]
