"""The grid stage: bin a layout into square cells and summarise each cell.

Carter et al., "Activation Atlas" (Distill 2019): the 2-D layout of the activations is covered
by a ``size x size`` grid; every cell with enough activations gets the *mean* activation
vector of its rows (the direction its icon visualises), a count, the classes its rows are
attributed to on average, and a few dataset examples. Several sizes are the zoom levels.

Conventions (shared by every function here)

- ``xy`` is ``(N, 2)`` in ``[0, 1]``: column 0 is x, column 1 is y.
- Bins are half-open, ``[k/size, (k+1)/size)``, so a point on a border belongs to exactly one
  cell, except that 1.0 falls in the last bin. Borders are compared in the dtype of ``xy``
  (float32 stays float32, so ``float32(0.7)`` at size 10 is in bin 7).
- Cell ids are row-major: ``cell_id = iy * size + ix``; ``coords`` are ``(iy, ix)``.
- Everything is vectorised (``np.bincount``, sorting and segment reductions); no Python loop
  runs over cells or rows. Activations are reduced in row chunks, so a million float16 rows
  never exist as one float32/float64 array.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
from tqdm.auto import tqdm

from atlas.checks import SettingError, at_least, available_memory
from atlas.checks import sizes as check_sizes
from atlas.store.activations import ActivationsFile
from atlas.store.cells import CellLevel, write_cells
from atlas.store.layout import read_layout
from atlas.store.lineage import check_output, require_current

log = logging.getLogger(__name__)

#: Cells with fewer rows are dropped. Lucid's activation-atlas recipe
#: (``bin_laid_out_activations``, threshold=5, ``count > threshold``) keeps cells of 6 or more:
#: the mean of a handful of rows is mostly the noise of one or two images and renders as a
#: noisy icon.
DEFAULT_MIN_COUNT = 6
#: Zoom levels: 20 x 20 is the paper's overview; each level doubles the resolution.
DEFAULT_SIZES = (20, 40, 80, 160)
#: Dataset examples per cell: a 4 x 2 strip in a hover card, enough to see what the cell
#: responds to without dominating the file (M x 8 int64).
DEFAULT_EXAMPLES = 8
#: Classes per cell by mean attribution.
DEFAULT_TOP_K = 5
#: The largest grid size: 16.8 million cells, far more than any layout fills (a million rows at
#: 6 a cell fill a 400 x 400 grid); a larger one only costs memory (:func:`grid_memory_bytes`).
MAX_GRID_SIZE = 4096
#: Share of the available memory a grid may plan to use.
MEMORY_SHARE = 0.8


class EmptyGridError(ValueError):
    """No level of the grid keeps a cell: there would be nothing to render or draw."""


# --------------------------------------------------------------------------- pure functions


def grid_cells(xy: np.ndarray, size: int) -> np.ndarray:
    """Cell id of every point: ``iy * size + ix`` with half-open bins.

    Args:
        xy: ``(N, 2)`` positions in ``[0, 1]`` (x, y); float16 is compared as float32.
        size: cells per side (>= 1).

    Returns:
        ``(N,)`` int64 ids in ``[0, size * size)``.

    Raises:
        ValueError: a point outside ``[0, 1]`` or not finite (normalise the layout first, and
            pass only the ``valid`` rows of ``layout.h5``).
    """
    size = _check_size(size)
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"xy must have shape (N, 2), got {xy.shape}")
    if not np.issubdtype(xy.dtype, np.floating) or xy.dtype.itemsize < 4:
        xy = xy.astype(np.float32)
    if len(xy) and not (np.isfinite(xy).all() and xy.min() >= 0 and xy.max() <= 1):
        bad = np.flatnonzero(~(np.isfinite(xy) & (xy >= 0) & (xy <= 1)).all(axis=1))
        raise ValueError(
            f"{len(bad)} points are outside [0, 1] or not finite (first rows {bad[:5].tolist()}); "
            "normalise with atlas.stages.reduce.normalize_layout and keep only valid rows"
        )
    borders = (np.arange(size + 1, dtype=np.float64) / size).astype(xy.dtype)
    ixy = np.searchsorted(borders, xy, side="right") - 1
    np.clip(ixy, 0, size - 1, out=ixy)
    return ixy[:, 1].astype(np.int64) * size + ixy[:, 0]


def cell_coords(cell_ids: np.ndarray, size: int) -> np.ndarray:
    """``(M, 2)`` int32 ``(iy, ix)`` of row-major cell ids."""
    iy, ix = np.divmod(np.asarray(cell_ids, np.int64), _check_size(size))
    return np.stack([iy, ix], axis=1).astype(np.int32)


def ancestor_rows(coords: np.ndarray, size: int, coarser_ids: np.ndarray, coarser: int) -> np.ndarray:
    """``(M,)`` int64: for each cell ``coords`` ``(M, 2)`` ``(iy, ix)`` of grid ``size``, the row in
    ``coarser_ids`` (the kept cell ids of grid ``coarser``) of the coarser cell that holds its
    center, -1 where that cell was not kept. With sizes that double, ``(iy // 2, ix // 2)``."""
    iy, ix = ((np.asarray(coords, np.float64) + 0.5) * (_check_size(coarser) / _check_size(size))).astype(np.int64).T
    want = np.minimum(iy, coarser - 1) * coarser + np.minimum(ix, coarser - 1)
    ids = np.asarray(coarser_ids, np.int64)
    if not len(ids):
        return np.full(len(want), -1, np.int64)
    order = np.argsort(ids, kind="stable")
    rows = order[np.minimum(np.searchsorted(ids, want, sorter=order), len(ids) - 1)].astype(np.int64)
    return np.where(ids[rows] == want, rows, -1)


def cell_means(
    acts: np.ndarray,
    ids: np.ndarray,
    n_cells: int,
    min_count: int = DEFAULT_MIN_COUNT,
    *,
    chunk_rows: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean activation of every cell holding at least ``min_count`` rows.

    Args:
        acts: ``(N, C)`` activations (float16/32; anything sliced by rows, e.g. a stored dataset, works too).
        ids: ``(N,)`` cell id of each row (e.g. from :func:`grid_cells`), in ``[0, n_cells)``.
        n_cells: number of possible ids (``size * size``).
        min_count: cells with fewer rows are dropped (default :data:`DEFAULT_MIN_COUNT`).
        chunk_rows: rows converted to float32 at a time; sums accumulate in float64.

    Returns:
        ``(means (M, C) float32, cell_ids (M,) int64 ascending, counts (M,) int64)``.
    """
    ids = _check_ids(ids, n_cells)
    if len(ids) != acts.shape[0]:
        raise ValueError(f"acts has {acts.shape[0]} rows but ids has {len(ids)}")
    acc = _MeanAccumulator(np.bincount(ids, minlength=n_cells), min_count, acts.shape[1])
    for start in range(0, len(ids), chunk_rows):
        stop = min(start + chunk_rows, len(ids))
        acc.add(np.asarray(acts[start:stop], np.float32), ids[start:stop])
    return acc.means(), acc.cell_ids, acc.counts


def cell_attribution(
    top_classes: np.ndarray,
    top_values: np.ndarray,
    ids: np.ndarray,
    cell_ids: np.ndarray,
    counts: np.ndarray,
    k: int = DEFAULT_TOP_K,
    *,
    chunk_rows: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean class attribution per cell from each row's top-k, and the cell's top ``k`` classes.

    A row contributes its listed ``top_values`` to its listed ``top_classes``; classes outside
    a row's top-k count as 0 for that row (the per-row lists are what collect keeps). The mean
    divides by the cell's full ``counts``.

    Args:
        top_classes: ``(N, k_in)`` int class ids per row, descending attribution.
        top_values: ``(N, k_in)`` float attribution values.
        ids: ``(N,)`` cell id per row; rows whose cell is not in ``cell_ids`` are ignored.
        cell_ids: ``(M,)`` kept cells, ascending (from :func:`cell_means`).
        counts: ``(M,)`` rows per kept cell.
        k: classes to return per cell.

    Returns:
        ``(classes (M, k) int16, values (M, k) float32)``, descending by value; ``-1`` / 0
        where fewer than ``k`` classes were seen in the cell.
    """
    acc = _AttributionAccumulator(np.asarray(cell_ids, np.int64), counts)
    ids = np.asarray(ids, np.int64)
    for start in range(0, len(ids), chunk_rows):
        stop = min(start + chunk_rows, len(ids))
        acc.add(np.asarray(top_classes[start:stop]), np.asarray(top_values[start:stop]), ids[start:stop])
    return acc.top(k)


def cell_examples(
    acts: np.ndarray,
    ids: np.ndarray,
    cell_ids: np.ndarray,
    means: np.ndarray,
    image_index: np.ndarray | None = None,
    n_examples: int = DEFAULT_EXAMPLES,
    *,
    chunk_rows: int = 65536,
) -> np.ndarray:
    """The ``n_examples`` rows of each cell most similar (cosine) to the cell's mean.

    With ``image_index`` at most one row per image is taken per cell (neighbouring positions of
    one photo look alike), so the examples show different photos.

    Args:
        acts: ``(N, C)`` activations.
        ids: ``(N,)`` cell id per row.
        cell_ids: ``(M,)`` kept cells, ascending; ``means``: ``(M, C)`` their mean activations.
        image_index: ``(N,)`` image of each row, or ``None``.

    Returns:
        ``(M, n_examples)`` int64 row indices into ``acts``, best first, ``-1`` padded.
    """
    sel = _ExampleSelector(np.asarray(cell_ids, np.int64), means, n_examples)
    ids = np.asarray(ids, np.int64)
    for start in range(0, len(ids), chunk_rows):
        stop = min(start + chunk_rows, len(ids))
        img = None if image_index is None else np.asarray(image_index[start:stop], np.int64)
        sel.add(np.asarray(acts[start:stop]), ids[start:stop], np.arange(start, stop), img)
    return sel.result()[0]


# --------------------------------------------------------------------------- accumulators


def _check_size(size: int) -> int:
    if int(size) != size or size < 1:
        raise ValueError(f"grid size must be a positive integer, got {size!r}")
    return int(size)


def _check_ids(ids: np.ndarray, n_cells: int) -> np.ndarray:
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"cell ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if len(ids) and (ids.min() < 0 or ids.max() >= n_cells):
        raise ValueError(f"cell ids must lie in [0, {n_cells}); got {ids.min()}..{ids.max()}")
    return ids


class _MeanAccumulator:
    """Float64 sums of the rows of every kept cell, fed chunk by chunk."""

    def __init__(self, all_counts: np.ndarray, min_count: int, channels: int):
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        keep = all_counts >= min_count
        self.cell_ids = np.flatnonzero(keep).astype(np.int64)
        self.counts = all_counts[keep].astype(np.int64)
        self.dropped_rows = int(all_counts[~keep].sum())
        self.compact = np.full(len(all_counts), -1, np.int64)
        self.compact[self.cell_ids] = np.arange(len(self.cell_ids))
        self.sums = np.zeros((len(self.cell_ids), channels), np.float64)

    def add(self, acts: np.ndarray, ids: np.ndarray) -> None:
        ci = self.compact[ids]
        rows = np.flatnonzero(ci >= 0)
        if not len(rows):
            return
        uniq, inv = np.unique(ci[rows], return_inverse=True)
        # (cells x rows) 0/1 matrix times the rows: a segment sum without gathering the rows
        member = scipy.sparse.csr_matrix((np.ones(len(rows), np.float32), (inv.ravel(), rows)),
                                         shape=(len(uniq), len(ci)))
        self.sums[uniq] += member @ np.asarray(acts, np.float32)

    def means(self) -> np.ndarray:
        return (self.sums / np.maximum(self.counts, 1)[:, None]).astype(np.float32)


class _AttributionAccumulator:
    """Dense ``(M, K)`` sums of listed attribution per kept cell; K grows with the classes seen."""

    def __init__(self, cell_ids: np.ndarray, counts: np.ndarray, n_cells: int | None = None):
        self.cell_ids = cell_ids
        self.counts = np.asarray(counts, np.int64)
        n = int(cell_ids.max()) + 1 if n_cells is None and len(cell_ids) else (n_cells or 0)
        self.compact = np.full(n, -1, np.int64)
        self.compact[cell_ids] = np.arange(len(cell_ids))
        self.sums = np.zeros((len(cell_ids), 0), np.float64)
        self.seen = np.zeros((len(cell_ids), 0), bool)

    def add(self, classes: np.ndarray, values: np.ndarray, ids: np.ndarray) -> None:
        inside = ids < len(self.compact)
        ci = np.full(len(ids), -1, np.int64)
        ci[inside] = self.compact[ids[inside]]
        rows = np.flatnonzero(ci >= 0)
        if not len(rows):
            return
        cls = classes[rows].astype(np.int64)
        val = values[rows].astype(np.float64)
        ok = cls >= 0  # -1 marks an empty slot
        need = int(cls.max()) + 1 if ok.any() else 0
        if need > self.sums.shape[1]:
            grow = need - self.sums.shape[1]
            self.sums = np.pad(self.sums, ((0, 0), (0, grow)))
            self.seen = np.pad(self.seen, ((0, 0), (0, grow)))
        r = np.broadcast_to(ci[rows][:, None], cls.shape)[ok]
        flat = r * self.sums.shape[1] + cls[ok]
        np.add.at(self.sums.reshape(-1), flat, val[ok])  # 1-D ufunc.at takes numpy's fast path
        self.seen.reshape(-1)[flat] = True

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        m, n_cls = self.sums.shape
        classes = np.full((m, k), -1, np.int16)
        values = np.zeros((m, k), np.float32)
        if m == 0 or n_cls == 0:
            return classes, values
        mean = self.sums / np.maximum(self.counts, 1)[:, None]
        ranked = np.where(self.seen, mean, -np.inf)
        kk = min(k, n_cls)
        part = np.argpartition(-ranked, kk - 1, axis=1)[:, :kk] if kk < n_cls else np.tile(np.arange(n_cls), (m, 1))
        pv = np.take_along_axis(ranked, part, 1)
        order = np.lexsort((part, -pv), axis=1)[:, :kk]  # by value, ties by class id
        best = np.take_along_axis(part, order, 1)
        bv = np.take_along_axis(pv, order, 1)
        seen = np.isfinite(bv)
        classes[:, :kk] = np.where(seen, best, -1)
        values[:, :kk] = np.where(seen, bv, 0.0)
        return classes, values


class _ExampleSelector:
    """Running top-``E`` rows per cell by cosine similarity to the cell mean (one per image)."""

    def __init__(self, cell_ids: np.ndarray, means: np.ndarray, n_examples: int):
        if n_examples < 0:
            raise ValueError(f"n_examples must be >= 0, got {n_examples}")
        self.e = n_examples
        n = int(cell_ids.max()) + 1 if len(cell_ids) else 0
        self.compact = np.full(n, -1, np.int64)
        self.compact[cell_ids] = np.arange(len(cell_ids))
        norms = np.linalg.norm(means, axis=1, keepdims=True)
        self.unit = (means / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        self.m = len(cell_ids)
        self.best = (np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64), np.empty(0, np.int64))

    def add(self, acts: np.ndarray, ids: np.ndarray, rows: np.ndarray, images: np.ndarray | None) -> None:
        if self.e == 0:
            return
        inside = ids < len(self.compact)
        ci = np.full(len(ids), -1, np.int64)
        ci[inside] = self.compact[ids[inside]]
        keep = np.flatnonzero(ci >= 0)
        if not len(keep):
            return
        a = acts[keep].astype(np.float32, copy=False)
        c = ci[keep]
        dots = np.einsum("nc,nc->n", a, self.unit[c])
        norms = np.linalg.norm(a, axis=1)
        sims = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), -np.inf).astype(np.float32)
        img = rows[keep] if images is None else images[keep]  # no image index: every row its own
        cand = (
            np.concatenate([self.best[0], c]),
            np.concatenate([self.best[1], sims]),
            np.concatenate([self.best[2], rows[keep].astype(np.int64)]),
            np.concatenate([self.best[3], img.astype(np.int64)]),
        )
        self.best = self._select(*cand)

    def _select(self, c: np.ndarray, s: np.ndarray, r: np.ndarray, img: np.ndarray) -> tuple[np.ndarray, ...]:
        # best row per (cell, image): sort by cell, image, similarity desc, row
        order = np.lexsort((r, -s, img, c))
        c, s, r, img = c[order], s[order], r[order], img[order]
        first = np.r_[True, (c[1:] != c[:-1]) | (img[1:] != img[:-1])]
        c, s, r, img = c[first], s[first], r[first], img[first]
        # then the E best per cell: sort by cell, similarity desc, row; rank within the cell
        order = np.lexsort((r, -s, c))
        c, s, r, img = c[order], s[order], r[order], img[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
        keep = rank < self.e
        return c[keep], s[keep], r[keep], img[keep]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows (M, E), images (M, E))`` int64, -1 padded."""
        rows = np.full((self.m, self.e), -1, np.int64)
        images = np.full((self.m, self.e), -1, np.int64)
        c, _s, r, img = self.best
        if len(c):
            starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
            rank = np.arange(len(c)) - np.repeat(starts, np.diff(np.r_[starts, len(c)]))
            rows[c, rank] = r
            images[c, rank] = img
        return rows, images


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class GridSettings:
    """Everything that decides what ``cells.h5`` holds (hashed into the file).

    Attributes:
        sizes: cells per side of each zoom level (default :data:`DEFAULT_SIZES`).
        min_count: cells with fewer rows are dropped (default :data:`DEFAULT_MIN_COUNT`, as
            Lucid's recipe).
        top_k: classes kept per cell, by mean attribution.
        n_examples: dataset examples per cell (nearest the cell mean by cosine, one per image).
        class_filter: keep only the rows of one class (name, WordNet id or index; see
            :func:`atlas.stages.reduce.select_class_rows`) on an existing layout.
        class_top_n: with ``class_filter``, also keep this many rows most attributed to it.
        chunk_rows: rows read at a time (memory knob; not part of the hash).
    """

    sizes: tuple[int, ...] = DEFAULT_SIZES
    min_count: int = DEFAULT_MIN_COUNT
    top_k: int = DEFAULT_TOP_K
    n_examples: int = DEFAULT_EXAMPLES
    class_filter: str | None = None
    class_top_n: int = 2000
    chunk_rows: int = 32768

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", check_grid_sizes("sizes", self.sizes))
        at_least("min_count", self.min_count, 1)
        at_least("top_k", self.top_k, 1)
        at_least("n_examples", self.n_examples, 0)
        at_least("class_top_n", self.class_top_n, 0)
        at_least("chunk_rows", self.chunk_rows, 1)

    def hashed(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("chunk_rows")
        d["sizes"] = list(self.sizes)
        return d


def check_grid_sizes(key: str, sizes: Any) -> tuple[int, ...]:
    """Grid sizes: distinct positive integers up to :data:`MAX_GRID_SIZE` (a :class:`SettingError` naming ``key``)."""
    values = tuple(sizes)
    big = max((v for v in values if isinstance(v, int)), default=0)
    return check_sizes(key, values, largest=MAX_GRID_SIZE,
                       hint=f": a {big} x {big} grid has {big * big:,} cells, more than any layout fills "
                            f"(the default finest level is {DEFAULT_SIZES[-1]}); use smaller sizes")


def grid_memory_bytes(sizes: Sequence[int], n_rows: int, channels: int, *, min_count: int = 1,
                      n_classes: int = 1000, n_examples: int = DEFAULT_EXAMPLES,
                      chunk_rows: int = GridSettings.chunk_rows) -> int:
    """About the most memory :func:`grid_file` holds for these levels: per level, int64 arrays over
    every cell of the grid (row counts and three cell indexes, 33 bytes a cell) and over the rows
    (cell ids), and per kept cell (at most ``n_rows // min_count`` of them) the float64 sums of its
    activations and class attribution and its examples; plus one chunk of rows."""
    total = 2 * chunk_rows * channels * 4
    for size in sizes:
        cells = size * size
        kept = min(cells, n_rows // max(1, min_count))
        total += 33 * cells + 8 * n_rows + kept * (12 * channels + 9 * n_classes + 32 * n_examples)
    return total


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


__all__ = [
    "DEFAULT_EXAMPLES",
    "DEFAULT_MIN_COUNT",
    "DEFAULT_SIZES",
    "DEFAULT_TOP_K",
    "MAX_GRID_SIZE",
    "EmptyGridError",
    "GridSettings",
    "GridSummary",
    "ancestor_rows",
    "cell_attribution",
    "cell_coords",
    "cell_examples",
    "cell_means",
    "grid_cells",
    "grid_file",
    "grid_memory_bytes",
]
