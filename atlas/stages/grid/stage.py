"""The grid stage over files: ``activations.h5`` + ``layout.h5`` -> ``cells.h5`` (:func:`grid_file`),
what it did (:class:`GridSummary`), and its refusals before any work (too little memory, an empty
grid)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.checks import SettingError, available_memory
from atlas.stages.grid.accumulators import _AttributionAccumulator, _ExampleSelector, _MeanAccumulator
from atlas.stages.grid.cells import cell_coords, grid_cells
from atlas.stages.grid.settings import MEMORY_SHARE, GridSettings, grid_memory_bytes
from atlas.store.activations import ActivationsFile
from atlas.store.cells import CellLevel, write_cells
from atlas.store.layout import read_layout
from atlas.store.lineage import check_output, require_current

log = logging.getLogger("atlas.stages.grid")


class EmptyGridError(ValueError):
    """No level of the grid keeps a cell: there would be nothing to render or draw."""


@dataclass
class GridSummary:
    """What a grid run did: cells kept per level and rows binned."""

    output: Path
    cells: dict[int, int] = field(default_factory=dict)
    rows: int = 0
    dropped_rows: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    up_to_date: bool = False

    def describe(self) -> str:
        if self.up_to_date:
            return f"{self.output} is complete and current; nothing to do"
        levels = ", ".join(f"{s}x{s}: {n} cells" for s, n in self.cells.items())
        return f"binned {self.rows} rows -> {levels} in {self.seconds:.1f} s; wrote {self.output}"


def grid_file(
    activations_path: str | os.PathLike,
    layout_path: str | os.PathLike,
    cells_path: str | os.PathLike,
    settings: GridSettings | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    allow_empty: bool = False,
    **overrides: Any,
) -> GridSummary:
    """The grid stage: ``activations.h5`` + ``layout.h5`` -> ``cells.h5``.

    Bins the valid rows of the layout at every size in ``settings.sizes`` and writes, per
    kept cell, the mean activation (``direction``), count, mean position, top classes by mean
    attribution and dataset examples (layout of the file: :mod:`atlas.store.cells`). Two
    passes over the activations (means, then examples), every level at once; memory is one
    chunk plus the per-cell accumulators.

    Skipped when ``cells_path`` is complete for the same settings and inputs, made again when an
    input changed since; cells of other settings are kept and
    :class:`~atlas.store.common.SettingsChangedError` names the changes, unless ``overwrite``. A
    layout made from activations that changed since is refused
    (:class:`~atlas.store.common.StaleInputError`: run reduce first). ``overrides`` replace fields
    of ``settings`` (e.g. ``grid_file(a, l, c, sizes=(10, 20))``).

    Raises a :class:`~atlas.checks.SettingError` (key ``sizes``) before any work when the levels
    would need more memory than the machine has (:func:`grid_memory_bytes`), and an
    :class:`EmptyGridError`, writing nothing, when no level keeps a cell (unless ``allow_empty``:
    the class atlases keep such levels, drawn empty).
    """
    t0 = time.perf_counter()
    settings = dataclasses.replace(settings or GridSettings(), **overrides)
    cells_path = Path(cells_path)
    layout = read_layout(layout_path)
    require_current(layout_path)
    with ActivationsFile(activations_path) as acts:
        layer = acts.layer(layout.layer)
        class_index = None
        if settings.class_filter is not None:
            from atlas.stages.reduce import resolve_class

            class_index = resolve_class(settings.class_filter)
        full = dict(settings.hashed(), class_filter=class_index, layer=layer,
                    layout_settings_hash=layout.attrs.get("settings_hash"))
        inputs = {"activations": activations_path, "layout": layout_path}
        found = check_output(cells_path, "cells", full, stage="grid", inputs=inputs,
                             input_keys=("layout_settings_hash",), overwrite=overwrite)
        if found.state == "current":
            log.info("%s is complete and current; skipping grid", cells_path)
            return GridSummary(cells_path, up_to_date=True)
        if found.state == "stale":
            log.warning("%s: %s; binning again", cells_path, "; ".join(found.reasons))

        rows = np.flatnonzero(layout.valid)
        if class_index is not None:
            from atlas.stages.reduce import select_class_rows

            chosen = select_class_rows(acts, layer, class_index, settings.class_top_n)
            rows = rows[np.isin(layout.row_ids[rows], chosen)]
        if not len(rows):
            raise ValueError(f"{layout_path} has no valid rows to bin; check the reduce summary (all rows skipped?)")
        xy = layout.xy[rows]
        layer_rows = layout.row_ids[rows]
        if np.any(np.diff(layer_rows) <= 0):
            raise ValueError(f"{layout_path}: row_ids are not strictly increasing; rerun reduce")
        image_index = acts.read_rows(layer, "image_index", layer_rows)
        has_attr = acts.has(layer, "attribution/top_classes")
        if not has_attr:
            log.warning("%s has no attribution; cells get no top classes (collect with attribution on)",
                        activations_path)

        channels = acts.spec(layer).channels
        _check_memory(settings, len(rows), channels, has_attr)
        levels = {}
        fullest = {}
        for size in settings.sizes:
            ids = grid_cells(xy, size)
            counts = np.bincount(ids, minlength=size * size)
            fullest[size] = int(counts.max())
            mean_acc = _MeanAccumulator(counts, settings.min_count, channels)
            del counts
            levels[size] = (ids, mean_acc, _AttributionAccumulator(mean_acc.cell_ids, mean_acc.counts, size * size))
        if not allow_empty and not any(len(acc.cell_ids) for _ids, acc, _attr in levels.values()):
            coarsest = min(settings.sizes)
            raise EmptyGridError(
                f"no cell of the {', '.join(f'{s}x{s}' for s in settings.sizes)} grid keeps min_count = "
                f"{settings.min_count} rows: the {len(rows)} rows put at most {fullest[coarsest]} in one cell of "
                f"the {coarsest}x{coarsest} grid, so the atlas would be empty. Lower min_count (--min-count, "
                f"[grid] min_count) to {max(1, fullest[coarsest])} or less, or use smaller sizes (--sizes, "
                "[grid] sizes), or collect more rows")

        n = len(rows)
        chunk = settings.chunk_rows
        bar = tqdm(total=2 * n, unit="row", desc=f"grid {layer}", disable=not progress, leave=False)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            a = acts.read_rows(layer, "activations", layer_rows[start:stop]).astype(np.float32)
            tc = tv = None
            if has_attr:
                tc = acts.read_rows(layer, "attribution/top_classes", layer_rows[start:stop])
                tv = acts.read_rows(layer, "attribution/top_values", layer_rows[start:stop])
            for ids, mean_acc, attr_acc in levels.values():
                mean_acc.add(a, ids[start:stop])
                if has_attr:
                    attr_acc.add(tc, tv, ids[start:stop])
            bar.update(stop - start)

        selectors = {}
        means = {}
        for size, (ids, mean_acc, _attr) in levels.items():
            means[size] = mean_acc.means()
            selectors[size] = _ExampleSelector(mean_acc.cell_ids, means[size], settings.n_examples)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            a = acts.read_rows(layer, "activations", layer_rows[start:stop])
            for size, (ids, _m, _a) in levels.items():
                selectors[size].add(a, ids[start:stop], np.arange(start, stop), image_index[start:stop])
            bar.update(stop - start)
        bar.close()

        out: list[CellLevel] = []
        summary = GridSummary(cells_path, rows=n)
        for size, (ids, mean_acc, attr_acc) in levels.items():
            m = len(mean_acc.cell_ids)
            inv = mean_acc.compact[ids]
            inside = inv >= 0
            center = np.stack([
                np.bincount(inv[inside], weights=xy[inside, 1], minlength=m),
                np.bincount(inv[inside], weights=xy[inside, 0], minlength=m),
            ], axis=1) / np.maximum(mean_acc.counts, 1)[:, None]
            top_c, top_v = attr_acc.top(settings.top_k)
            ex_local, ex_img = selectors[size].result()
            ex_rows = np.where(ex_local >= 0, layer_rows[np.maximum(ex_local, 0)], -1)
            out.append(CellLevel(
                size=size, min_count=settings.min_count, cell_id=mean_acc.cell_ids,
                coords=cell_coords(mean_acc.cell_ids, size), center=center, count=mean_acc.counts,
                direction=means[size], top_classes=top_c, top_values=top_v,
                example_rows=ex_rows, example_images=ex_img, n_dropped_rows=mean_acc.dropped_rows,
            ))
            summary.cells[size] = m
            summary.dropped_rows[size] = mean_acc.dropped_rows
            log.info("grid %dx%d: %d cells kept, %d rows in cells below min_count %d",
                     size, size, m, mean_acc.dropped_rows, settings.min_count)
            if m == 0:
                log.warning("grid %dx%d keeps no cell: no cell holds %d of the %d rows; lower min_count "
                            "or use smaller sizes", size, size, settings.min_count, n)
        write_cells(cells_path, out, full, {
            "model": acts.model, "layer": layer, "source": str(Path(activations_path)),
            "layout": str(Path(layout_path)), "n_rows": n,
        }, inputs=inputs)
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_memory(settings: GridSettings, n_rows: int, channels: int, has_attr: bool) -> None:
    """Refuse levels that would need more than :data:`MEMORY_SHARE` of the available memory."""
    need = grid_memory_bytes(settings.sizes, n_rows, channels, min_count=settings.min_count,
                             n_classes=1000 if has_attr else 0, n_examples=settings.n_examples,
                             chunk_rows=settings.chunk_rows)
    free = available_memory()
    if free is not None and need > MEMORY_SHARE * free:
        mib = 1 << 20
        biggest = max(settings.sizes)
        raise SettingError("sizes", (
            f"{', '.join(map(str, settings.sizes))} would need about {need / mib:,.0f} MiB for {n_rows} rows of "
            f"{channels} channels (most of it for the {biggest} x {biggest} level), but {free / mib:,.0f} MiB are "
            "available; use smaller sizes"))
