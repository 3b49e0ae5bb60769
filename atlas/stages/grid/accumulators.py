"""The grid's accumulators: per-cell sums of activations and class attribution, and the running best
examples of each cell, fed chunk by chunk of rows (see the package's conventions)."""

from __future__ import annotations

import numpy as np
import scipy.sparse


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
