"""The grid's pure functions over arrays: the cell of every point (:func:`grid_cells`), cell
coordinates and ancestors, and each cell's mean activation, class attribution and examples."""

from __future__ import annotations

import numpy as np

from atlas.stages.grid.accumulators import _AttributionAccumulator, _ExampleSelector, _MeanAccumulator
from atlas.stages.grid.settings import DEFAULT_EXAMPLES, DEFAULT_MIN_COUNT, DEFAULT_TOP_K


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
