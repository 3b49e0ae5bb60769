"""The reduce stage: a 2-D layout of a layer's activation vectors.

Carter et al., "Activation Atlas" (Distill 2019) lay out the activations with UMAP (cosine
metric) and rescale the result into the unit square with a percentile clip
(:func:`normalize_layout`). UMAP is fitted on a sample (default 100,000 rows); every other row
is *placed* into the fitted layout:

- ``placement="knn"`` (default): the row's ``n_neighbors`` nearest fitted rows (cosine), found
  with the fitted nearest-neighbour index (pynndescent's ``NNDescent.query``, the index UMAP
  builds while fitting) or, for small fits, an exact matrix-product search; the row goes to
  the per-axis *median* of their positions (``knn_aggregate="median"``). ``UMAP.transform``
  starts new points at the membership-weighted *mean* of the same neighbours
  (``knn_aggregate="mean"``) and then refines them with SGD epochs; the refinement is what
  makes it slow (~400 rows/s on two cores). The median needs no refinement: when the
  neighbours straddle two clusters it stays in one of them instead of landing in the empty
  space between, and measured on held-out rows its trustworthiness matches or beats
  ``UMAP.transform`` at tens of thousands of rows/s (figures in ``benchmarks/README.md``).
- ``placement="umap"``: ``UMAP.transform`` itself (exact, slow).

Rows the metric cannot place are handled explicitly, never silently:

- non-finite rows (NaN/inf) are skipped: status 1, ``xy`` NaN, a warning names the first rows;
- all-zero rows (cosine distance undefined) get status 2 and sit at the centroid of the placed
  rows; they are not ``valid``, so the grid stage does not bin them;
- duplicate rows of the fit sample (exact after unit-normalising and rounding to float16) are
  fitted once and mapped back: UMAP's neighbour graph degenerates on many identical points.
  A placed row identical to a fitted row takes that row's position (as ``UMAP.transform`` does).

The stage (:func:`reduce_file`) writes ``layout.h5`` (:mod:`atlas.store.layout`) chunk by
chunk with a committed-rows counter, in parallel with Dask's threaded scheduler, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import pickle
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from tqdm.auto import tqdm

from atlas.store.activations import ActivationsFile
from atlas.store.common import ArtifactError, settings_hash
from atlas.store.layout import NONFINITE, PLACED, ZERO, LayoutWriter, model_path, read_layout, read_rows

if TYPE_CHECKING:
    from distributed import Client

    from atlas.distributed import Scheduler

log = logging.getLogger(__name__)

Placement = Literal["knn", "umap"]
KnnBackend = Literal["auto", "index", "brute"]

#: Fits with at most this many distinct rows are searched exactly (one matrix product per
#: chunk); larger ones use the NNDescent index, whose query cost barely grows with the fit.
BRUTE_MAX_FIT = 8192
_NORMALISED_METRICS = ("cosine", "correlation")


# --------------------------------------------------------------------------- normalisation


def layout_bounds(
    xy: np.ndarray, low: float = 1.0, high: float = 99.0, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis bounds ``(lo, hi)`` of :func:`normalize_layout` (NaN rows ignored).

    ``p_lo, p_hi`` = the ``low``/``high`` percentiles of each axis; ``r = p_hi - p_lo``;
    ``lo = p_lo - margin * r``, ``hi = p_hi + margin * r``. An axis with ``r == 0`` gets
    ``lo = p_lo - 0.5``, ``hi = p_hi + 0.5`` (its points land at 0.5).
    """
    xy = np.asarray(xy, np.float64)
    if xy.ndim != 2:
        raise ValueError(f"xy must have shape (N, d), got {xy.shape}")
    finite = np.isfinite(xy).all(axis=1)
    if not finite.any():
        raise ValueError("every row of xy is NaN or infinite; nothing to normalise")
    p_lo, p_hi = np.percentile(xy[finite], [low, high], axis=0)
    r = p_hi - p_lo
    half = np.where(r > 0, margin * r, 0.5)
    return p_lo - half, p_hi + half


def apply_bounds(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(clip(xy, lo, hi) - lo) / (hi - lo)`` per axis, as float32 in [0, 1]; NaN stays NaN."""
    xy = np.asarray(xy, np.float64)
    out = (np.clip(xy, lo, hi) - lo) / (np.asarray(hi) - np.asarray(lo))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def normalize_layout(xy: np.ndarray, low: float = 1.0, high: float = 99.0, margin: float = 0.1) -> np.ndarray:
    """Rescale a raw layout into the unit square the way the paper's notebooks do.

    Per axis: take the 1st and 99th percentiles ``p1, p99``, widen them by a 10% margin of
    their distance, ``lo = p1 - 0.1 (p99 - p1)``, ``hi = p99 + 0.1 (p99 - p1)``, clip to
    ``[lo, hi]`` and map linearly, ``x' = (clip(x) - lo) / (hi - lo)``. Outliers beyond the
    margin pile up on the border instead of squeezing the bulk of the map into a corner.

    (Lucid's ``normalize_layout`` widens ``hi`` with the already-widened ``lo``, a margin of
    11% on that side, and rescales by the clipped data's min/max; fixed ``lo``/``hi`` make the
    map an affine function that new points can be projected with. Bounds:
    :func:`layout_bounds`.)

    Args:
        xy: ``(N, d)`` raw coordinates; rows with NaN are ignored for the percentiles and stay NaN.

    Returns:
        ``(N, d)`` float32 in ``[0, 1]``.
    """
    lo, hi = layout_bounds(xy, low, high, margin)
    return apply_bounds(xy, lo, hi)


# --------------------------------------------------------------------------- placement


def membership_weights(dists: np.ndarray, tol: float = 1e-5, max_iter: int = 64) -> np.ndarray:
    """UMAP's fuzzy membership strengths of a new point's neighbours, normalised per row.

    For each row, find ``sigma`` with ``sum_j exp(-d_j / sigma) = log2(k)`` (UMAP's
    ``smooth_knn_dist`` with the transform's ``local_connectivity - 1 = 0``), by bisection in
    vectorised form; the weights are ``exp(-d_j / sigma)`` divided by their sum.

    Args:
        dists: ``(n, k)`` distances to the neighbours, ascending.

    Returns:
        ``(n, k)`` float64 weights summing to 1 per row.
    """
    d = np.asarray(dists, np.float64)
    n, k = d.shape
    target = np.log2(k) if k > 1 else 1.0
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    for _ in range(max_iter):
        psum = np.exp(-d / mid[:, None]).sum(axis=1)
        if np.all(np.abs(psum - target) < tol):
            break
        big = psum > target
        hi = np.where(big, mid, hi)
        lo = np.where(big, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0)
    mid = np.maximum(mid, 1e-3 * np.maximum(d.mean(axis=1), 1e-12))  # UMAP's MIN_K_DIST_SCALE
    w = np.exp(-d / mid[:, None])
    return w / w.sum(axis=1, keepdims=True)


class KNNPlacer:
    """Place rows by their nearest fitted rows (see the module docstring).

    Args:
        data: ``(F, C)`` float32 fitted rows, *prepared* (whitened if so, unit-normalised for
            cosine).
        embedding: ``(F, d)`` their layout coordinates.
        metric: the UMAP metric; the exact search supports ``"cosine"`` and ``"euclidean"``.
        n_neighbors: neighbours averaged per row.
        backend: ``"brute"`` (exact matrix-product search), ``"index"`` (NNDescent) or
            ``"auto"`` (brute up to ``BRUTE_MAX_FIT`` fitted rows).
        index: a fitted ``pynndescent.NNDescent`` over ``data`` (UMAP's own), else built lazily.
        epsilon: NNDescent search breadth (0.1: pynndescent's default; measured recall ~0.8 of
            the exact 20 neighbours, enough for a robust average).
        aggregate: ``"median"`` (per-axis median of the neighbours' positions) or ``"mean"``
            (UMAP's membership-weighted mean, :func:`membership_weights`).
        random_state: seed of an index built here.
    """

    def __init__(
        self,
        data: np.ndarray,
        embedding: np.ndarray,
        *,
        metric: str = "cosine",
        n_neighbors: int = 20,
        backend: KnnBackend = "auto",
        index: Any = None,
        epsilon: float = 0.1,
        aggregate: Literal["median", "mean"] = "median",
        random_state: int | None = 0,
    ):
        if aggregate not in ("median", "mean"):
            raise ValueError(f"knn_aggregate must be 'median' or 'mean', not {aggregate!r}")
        self.aggregate = aggregate
        self.data = np.ascontiguousarray(data, np.float32)
        self.embedding = np.asarray(embedding, np.float32)
        self.metric = metric
        self.n_neighbors = int(min(n_neighbors, len(self.data)))
        if backend == "auto":
            exact_ok = metric in ("cosine", "euclidean")
            backend = "brute" if exact_ok and len(self.data) <= BRUTE_MAX_FIT else "index"
        if backend == "brute" and metric not in ("cosine", "euclidean"):
            raise ValueError(f"knn_backend='brute' supports metric 'cosine' or 'euclidean', not {metric!r}; "
                             "use knn_backend='index'")
        self.backend = backend
        self.index = index
        self.epsilon = epsilon
        self.random_state = random_state
        self._token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._sqnorm = (self.data.astype(np.float64) ** 2).sum(axis=1) if metric == "euclidean" else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> str:
        return self._token

    def _ensure_index(self) -> Any:
        if self.index is None:
            from pynndescent import NNDescent

            log.info("building a nearest-neighbour index over %d fitted rows", len(self.data))
            self.index = NNDescent(self.data, metric=self.metric, n_neighbors=max(self.n_neighbors, 15),
                                   random_state=self.random_state, low_memory=True)
        return self.index

    def kneighbors(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (n, k) int64, distances (n, k) float32)`` ascending, for prepared rows ``x``."""
        x = np.ascontiguousarray(x, np.float32)
        k = self.n_neighbors
        if self.backend == "index":
            with self._lock:  # NNDescent.query reuses per-index work buffers; build it once
                idx, dist = self._ensure_index().query(x, k=k, epsilon=self.epsilon)
            idx, dist = idx.astype(np.int64), dist.astype(np.float32)
            missing = idx < 0  # fewer than k found: repeat the nearest one
            if missing.any():
                idx = np.where(missing, idx[:, :1], idx)
                dist = np.where(missing, dist[:, :1], dist)
            return idx, dist
        # exact: blocks of queries so that a block of scores stays near 64 MB
        block = max(1, (16 << 20) // max(1, len(self.data)))
        out_i = np.empty((len(x), k), np.int64)
        out_d = np.empty((len(x), k), np.float32)
        for s in range(0, len(x), block):
            q = x[s:s + block]
            prod = q @ self.data.T
            if self.metric == "cosine":
                dist = 1.0 - prod
            else:
                dist = np.sqrt(np.maximum((q.astype(np.float64) ** 2).sum(1)[:, None] - 2 * prod + self._sqnorm, 0))
            part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < dist.shape[1] else np.tile(
                np.arange(dist.shape[1]), (len(q), 1))
            pd = np.take_along_axis(dist, part, 1)
            order = np.lexsort((part, pd), axis=1)
            out_i[s:s + block] = np.take_along_axis(part, order, 1)
            out_d[s:s + block] = np.maximum(np.take_along_axis(pd, order, 1), 0)
        return out_i, out_d

    def place(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)`` float32 positions of prepared rows ``x``: median (or weighted mean) of the neighbours'."""
        if len(x) == 0:
            return np.empty((0, self.embedding.shape[1]), np.float32)
        idx, dist = self.kneighbors(x)
        pts = self.embedding[idx].astype(np.float64)  # (n, k, d)
        if self.aggregate == "median":
            xy = np.median(pts, axis=1)
        else:
            xy = np.einsum("nk,nkd->nd", membership_weights(dist), pts)
        exact = dist[:, 0] <= 1e-6  # identical to a fitted row: take its position
        xy[exact] = self.embedding[idx[exact, 0]]
        return xy.astype(np.float32)


# --------------------------------------------------------------------------- the estimator


class AtlasUMAP(TransformerMixin, BaseEstimator):
    """UMAP fitted on a sample, fast placement of the rest; reads like an sklearn estimator.

    Defaults follow the paper's notebooks (Lucid's activation-atlas recipe): cosine metric,
    ``n_neighbors=20`` (the low end of the 20-50 the published atlases use: local structure is
    what the grid cells average over, and the fit is fastest), ``min_dist=0.01`` (tightly
    packed clusters leave empty space between them instead of a uniform smear, which is what
    makes the atlas's regions readable).

    Args:
        n_neighbors: UMAP neighbourhood size (clipped to the number of distinct rows - 1).
        min_dist: UMAP's minimum distance between embedded points.
        metric: any UMAP metric; ``"cosine"`` as in the paper.
        n_components: layout dimensions (2 for an atlas, 1 for a comparison axis).
        whiten: decorrelate channels before the metric with ``(X^T X / n + eps)^(-1/2)``
            estimated on the fit sample (the paper whitens for rendering; off by default).
        sample_size: rows UMAP is fitted on (a seeded uniform sample of the usable rows).
        placement: ``"knn"`` (fast, default) or ``"umap"`` (``UMAP.transform``) for other rows.
        placement_neighbors: neighbours averaged by knn placement (default ``n_neighbors``).
        knn_backend: ``"auto"``, ``"index"`` (NNDescent) or ``"brute"`` (exact), see
            :class:`KNNPlacer`.
        knn_epsilon: NNDescent search breadth.
        knn_aggregate: ``"median"`` (default) or ``"mean"`` of the neighbours' positions.
        chunk_rows: rows transformed at a time.
        n_epochs: UMAP epochs (``None``: UMAP's default, 200 for large data).
        random_state: seed of sampling and UMAP (UMAP is then single-threaded but
            reproducible); ``None`` for a parallel, unseeded fit.

    Attributes (after ``fit``):
        umap_: the fitted ``umap.UMAP``.
        embedding_: ``(F, n_components)`` coordinates of the distinct fitted rows.
        fit_indices_: ``(F,)`` row indices into ``X`` of the distinct fitted rows.
        sample_indices_: ``(S,)`` sampled usable rows (duplicates included), ascending.
        sample_embedding_: ``(S, n_components)`` their coordinates.
        n_duplicates_: ``S - F``.
        whitening_: ``(C, C)`` float32 or ``None``.
        placer_: the :class:`KNNPlacer`.
        n_features_in_: ``C``.
    """

    def __init__(
        self,
        n_neighbors: int = 20,
        min_dist: float = 0.01,
        metric: str = "cosine",
        n_components: int = 2,
        whiten: bool = False,
        sample_size: int = 100_000,
        placement: Placement = "knn",
        placement_neighbors: int | None = None,
        knn_backend: KnnBackend = "auto",
        knn_epsilon: float = 0.1,
        knn_aggregate: Literal["median", "mean"] = "median",
        chunk_rows: int = 16384,
        n_epochs: int | None = None,
        random_state: int | None = 0,
    ):
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.n_components = n_components
        self.whiten = whiten
        self.sample_size = sample_size
        self.placement = placement
        self.placement_neighbors = placement_neighbors
        self.knn_backend = knn_backend
        self.knn_epsilon = knn_epsilon
        self.knn_aggregate = knn_aggregate
        self.chunk_rows = chunk_rows
        self.n_epochs = n_epochs
        self.random_state = random_state

    # ---- validation and preparation

    def _validate(self) -> None:
        if not (isinstance(self.n_neighbors, (int, np.integer)) and self.n_neighbors >= 2):
            raise ValueError(f"n_neighbors must be an integer >= 2 (the paper uses 20-50), got {self.n_neighbors!r}")
        if not (0.0 <= self.min_dist <= 1.0):
            raise ValueError(f"min_dist must lie in [0, 1] (the paper uses 0.01-0.05), got {self.min_dist!r}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")
        if self.sample_size < 3:
            raise ValueError(f"sample_size must be at least 3 (default 100000), got {self.sample_size}")
        if self.placement not in ("knn", "umap"):
            raise ValueError(f"placement must be 'knn' or 'umap', not {self.placement!r}")
        if self.knn_backend not in ("auto", "index", "brute"):
            raise ValueError(f"knn_backend must be 'auto', 'index' or 'brute', not {self.knn_backend!r}")
        if self.placement_neighbors is not None and self.placement_neighbors < 1:
            raise ValueError(f"placement_neighbors must be >= 1 or None, got {self.placement_neighbors}")
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.knn_epsilon < 0:
            raise ValueError(f"knn_epsilon must be >= 0, got {self.knn_epsilon}")
        if self.knn_aggregate not in ("median", "mean"):
            raise ValueError(f"knn_aggregate must be 'median' or 'mean', not {self.knn_aggregate!r}")

    def row_status(self, x: np.ndarray) -> np.ndarray:
        """``(n,)`` uint8: 0 usable, 1 non-finite, 2 zero (undefined for the metric)."""
        x = np.asarray(x)
        finite = np.isfinite(x).all(axis=1)
        status = np.where(finite, PLACED, NONFINITE).astype(np.uint8)
        if self.metric in _NORMALISED_METRICS:
            xf = np.where(finite[:, None], x, 0).astype(np.float32)
            if self.metric == "cosine":
                degenerate = ~(np.abs(xf) > 0).any(axis=1)
            else:
                degenerate = xf.std(axis=1) == 0
            status[finite & degenerate] = ZERO
        return status

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        """Usable rows as the metric sees them: float32, whitened if so, unit length for cosine."""
        x = np.asarray(x, np.float32)
        if self.whitening_ is not None:
            x = x @ self.whitening_
        if self.metric == "cosine":
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return np.ascontiguousarray(x, np.float32)

    # ---- fit / transform

    def fit(self, X: np.ndarray, y: Any = None) -> AtlasUMAP:
        """Fit UMAP on a seeded sample of the usable, distinct rows of ``X`` ``(N, C)``."""
        import umap

        self._validate()
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must have shape (N, C), got {X.shape}")
        self.n_features_in_ = X.shape[1]
        status = self.row_status(X)
        usable = np.flatnonzero(status == PLACED)
        if len(usable) < 3:
            raise ValueError(f"only {len(usable)} of {len(X)} rows are finite and non-zero; need at least 3 to fit")
        rng = np.random.default_rng(self.random_state)
        if len(usable) > self.sample_size:
            usable = np.sort(rng.choice(usable, self.sample_size, replace=False))
        sample = np.asarray(X[usable], np.float32)
        self.whitening_ = _whitening(sample) if self.whiten else None
        prep = self._prepare(sample)

        first, inverse = _distinct_rows(prep)
        n_distinct = len(first)
        if n_distinct < 3:
            raise ValueError(f"the sample has only {n_distinct} distinct rows; UMAP needs at least 3 "
                             "(are the activations constant? check the collect stage)")
        self.n_duplicates_ = len(usable) - n_distinct
        if self.n_duplicates_:
            log.info("fit sample: %d rows, %d distinct (%d duplicates fitted once)",
                     len(usable), n_distinct, self.n_duplicates_)
        fit_data = prep[first]
        k = int(min(self.n_neighbors, n_distinct - 1))
        seeded = self.random_state is not None
        self.umap_ = umap.UMAP(
            n_neighbors=k, min_dist=self.min_dist, metric=self.metric, n_components=self.n_components,
            n_epochs=self.n_epochs, random_state=self.random_state,
            transform_seed=42 if self.random_state is None else self.random_state,
            n_jobs=1 if seeded else -1, low_memory=True, init="spectral" if n_distinct > k + 1 else "random",
        )
        t0 = time.perf_counter()
        emb = self.umap_.fit_transform(fit_data).astype(np.float32)
        log.info("UMAP fit on %d x %d rows in %.1f s", *fit_data.shape, time.perf_counter() - t0)
        self.embedding_ = emb
        self.fit_indices_ = usable[first]
        self.sample_indices_ = usable
        self.sample_embedding_ = emb[inverse]
        self.placer_ = KNNPlacer(
            fit_data, emb, metric=self.metric,
            n_neighbors=self.placement_neighbors or self.n_neighbors, backend=self.knn_backend,
            index=getattr(self.umap_, "_knn_search_index", None), epsilon=self.knn_epsilon,
            aggregate=self.knn_aggregate, random_state=self.random_state,
        )
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "placer_"):
            raise ValueError("this AtlasUMAP is not fitted yet; call fit(X) first")

    def place(self, x: np.ndarray, placement: Placement | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One chunk: ``(coords (n, d) float32, NaN where not usable; status (n,) uint8)``."""
        self._check_fitted()
        x = np.asarray(x)
        status = self.row_status(x)
        out = np.full((len(x), self.embedding_.shape[1]), np.nan, np.float32)
        ok = np.flatnonzero(status == PLACED)
        if len(ok):
            prep = self._prepare(x[ok])
            how = placement or self.placement
            if how == "knn":
                out[ok] = self.placer_.place(prep)
            elif how == "umap":
                with self.placer_._lock:
                    out[ok] = self.umap_.transform(prep)
            else:
                raise ValueError(f"placement must be 'knn' or 'umap', not {how!r}")
        return out, status

    def transform(self, X: np.ndarray, placement: Placement | None = None) -> np.ndarray:
        """Coordinates ``(N, n_components)`` float32 of ``X`` ``(N, C)``, ``chunk_rows`` at a time.

        Raw (not normalised) coordinates; NaN for non-finite and all-zero rows.
        """
        self._check_fitted()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (N, {self.n_features_in_}), got {X.shape}")
        out = np.empty((len(X), self.embedding_.shape[1]), np.float32)
        for s in range(0, len(X), self.chunk_rows):
            out[s:s + self.chunk_rows] = self.place(X[s:s + self.chunk_rows], placement)[0]
        return out

    def fit_transform(self, X: np.ndarray, y: Any = None, **fit_params: Any) -> np.ndarray:
        """``fit(X)``, then coordinates of every row; the sampled rows keep their fitted position."""
        self.fit(X)
        out = self.transform(X)
        out[self.sample_indices_] = self.sample_embedding_
        return out


def _whitening(x: np.ndarray) -> np.ndarray:
    """``(C, C)`` symmetric ``(X^T X / n + eps I)^(-1/2)``, eps = 1e-3 of the mean eigenvalue."""
    cov = (x.astype(np.float64).T @ x.astype(np.float64)) / len(x)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, 0) + 1e-3 * max(vals.mean(), 1e-12)
    return ((vecs / np.sqrt(vals)) @ vecs.T).astype(np.float32)


def _distinct_rows(prep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: first occurrence of each distinct row (float16-rounded), in order.

    ``prep[first][inverse]`` reproduces ``prep`` up to the rounding.
    """
    rounded = np.ascontiguousarray(prep.astype(np.float16))
    keys = rounded.view(np.dtype((np.void, rounded.dtype.itemsize * rounded.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.ravel()]


# --------------------------------------------------------------------------- class atlases


def resolve_class(name_or_index: str | int) -> int:
    """Class index of a name, WordNet id or index (``ValueError`` with close matches)."""
    from atlas.resources import class_index

    if isinstance(name_or_index, (int, np.integer)):
        if name_or_index < 0:
            raise ValueError(f"class index must be >= 0, got {name_or_index}")
        return int(name_or_index)
    return class_index(str(name_or_index))


def class_attribution(top_classes: np.ndarray, top_values: np.ndarray, class_index: int) -> np.ndarray:
    """``(n,)`` attribution of each row to ``class_index`` from its top-k lists.

    A row not listing the class gets its k-th (smallest listed) value: the true attribution is
    at most that.
    """
    hit = np.asarray(top_classes) == class_index
    vals = np.asarray(top_values, np.float32)
    return np.where(hit.any(axis=1), np.where(hit, vals, -np.inf).max(axis=1), vals[:, -1])


def select_class_rows(
    acts: ActivationsFile, layer: str, class_index: int, top_n: int = 2000, chunk_rows: int = 65536
) -> np.ndarray:
    """Rows of a class activation atlas (Carter et al. 2019, "Focusing on a single class").

    The rows whose top attribution class is ``class_index``, plus the ``top_n`` rows most
    attributed to it (among rows listing it in their top-k; ties broken by row id).

    Returns:
        ``(M,)`` int64 sorted row ids.
    """
    group = acts.file[f"layers/{layer}"]
    if "attribution/top_classes" not in group:
        raise ValueError(f"{acts.path} has no attribution for {layer}; a class filter needs it "
                         "(collect again with attribution on)")
    top1: list[np.ndarray] = []
    best_r = np.empty(0, np.int64)
    best_v = np.empty(0, np.float32)
    for start, tc in acts.iter_chunks(layer, "attribution/top_classes", chunk_rows):
        tv = acts.read(layer, "attribution/top_values", start, start + len(tc))
        top1.append(np.flatnonzero(tc[:, 0] == class_index) + start)
        hit = tc == class_index
        rows = np.flatnonzero(hit.any(axis=1))
        if top_n and len(rows):
            v = np.where(hit[rows], tv[rows], -np.inf).max(axis=1).astype(np.float32)
            r = np.concatenate([best_r, rows + start])
            v = np.concatenate([best_v, v])
            order = np.lexsort((r, -v))[:top_n]
            best_r, best_v = r[order], v[order]
    return np.union1d(np.concatenate(top1), best_r).astype(np.int64)


def comparison_layout(
    acts: np.ndarray,
    attr_a: np.ndarray,
    attr_b: np.ndarray,
    *,
    n_neighbors: int = 20,
    min_dist: float = 0.01,
    metric: str = "cosine",
    random_state: int | None = 0,
) -> np.ndarray:
    """Two-class comparison layout (Carter et al. 2019, "Class comparison").

    x: the attribution difference ``d = attr_a - attr_b`` scaled by its 99th percentile of
    ``|d|`` and clipped, ``x = 0.5 + 0.5 * clip(d / p99(|d|), -1, 1)`` (0.5 = equal
    attribution, right = class A); y: a 1-D UMAP of the rows, normalised with
    :func:`normalize_layout`.

    Args:
        acts: ``(M, C)`` activations of the selected rows.
        attr_a, attr_b: ``(M,)`` attribution of each row to class A and class B.

    Returns:
        ``(M, 2)`` float32 in ``[0, 1]``; rows the metric cannot place get y = 0.5.
    """
    d = np.asarray(attr_a, np.float64) - np.asarray(attr_b, np.float64)
    if d.shape != (len(acts),):
        raise ValueError(f"attr_a and attr_b must have shape ({len(acts)},), "
                         f"got {np.shape(attr_a)}, {np.shape(attr_b)}")
    scale = np.percentile(np.abs(d), 99) if len(d) else 0.0
    x = 0.5 + 0.5 * np.clip(d / scale, -1, 1) if scale > 0 else np.full(len(d), 0.5)
    est = AtlasUMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, n_components=1,
                    sample_size=max(3, len(acts)), random_state=random_state)
    y = est.fit_transform(acts)[:, 0]
    ok = np.isfinite(y)
    y01 = np.full(len(y), 0.5, np.float32)
    if ok.any():
        y01[ok] = normalize_layout(y[ok, None])[:, 0]
    return np.stack([x, y01], axis=1).astype(np.float32)


def comparison_file(
    activations_path: str | os.PathLike,
    layout_path: str | os.PathLike,
    class_a: str | int,
    class_b: str | int,
    *,
    layer: str | None = None,
    top_n: int = 2000,
    n_neighbors: int = 20,
    min_dist: float = 0.01,
    random_state: int | None = 0,
) -> Path:
    """Write a ``layout.h5`` of the two-class comparison layout, ready for :func:`atlas.grid.grid_file`.

    Rows: the class rows of A and of B (:func:`select_class_rows` with ``top_n`` each); x and y
    from :func:`comparison_layout`, with each row's attribution to A and B taken from
    ``attribution/full`` when collected, else from its top-k (:func:`class_attribution`).
    Always rewritten (the data are a few thousand rows).
    """
    a_idx, b_idx = resolve_class(class_a), resolve_class(class_b)
    if a_idx == b_idx:
        raise ValueError(f"compare two different classes; both are {a_idx}")
    with ActivationsFile(activations_path) as acts:
        layer = acts.layer(layer)
        rows = np.union1d(select_class_rows(acts, layer, a_idx, top_n), select_class_rows(acts, layer, b_idx, top_n))
        if len(rows) < 3:
            raise ValueError(f"classes {a_idx} and {b_idx} select only {len(rows)} rows of {layer}; need at least 3")
        x = read_rows(acts.dataset(layer, "activations"), rows)
        group = acts.file[f"layers/{layer}"]
        if "attribution/full" in group:
            full = read_rows(group["attribution/full"], rows)
            attr_a, attr_b = full[:, a_idx].astype(np.float32), full[:, b_idx].astype(np.float32)
        else:
            tc = read_rows(group["attribution/top_classes"], rows)
            tv = read_rows(group["attribution/top_values"], rows)
            attr_a, attr_b = class_attribution(tc, tv, a_idx), class_attribution(tc, tv, b_idx)
        status = AtlasUMAP(metric="cosine").row_status(x)
        xy = comparison_layout(x, attr_a, attr_b, n_neighbors=n_neighbors, min_dist=min_dist,
                               random_state=random_state)
        xy[status == NONFINITE] = np.nan
        settings = {"compare": [a_idx, b_idx], "top_n": top_n, "n_neighbors": n_neighbors, "min_dist": min_dist,
                    "random_state": random_state, "layer": layer,
                    "source_settings_hash": str(acts.attrs.get("settings_hash", ""))}
        with LayoutWriter.create(layout_path, rows, settings, {
            "model": acts.model, "layer": layer, "source": str(Path(activations_path)),
            "source_settings_hash": str(acts.attrs.get("settings_hash", "")), "class_index": a_idx,
            "class_name": f"{class_a} vs {class_b}", "compare_class_index": b_idx,
        }) as w:
            ok = np.flatnonzero(status == PLACED)
            w.write_fit(rows[ok], xy[ok], rows[ok], xy[ok], 0)
            w.write_rows(0, xy, status)
            w.commit(len(rows))
            w.finish(xy, status, np.zeros(2), np.ones(2))
    return Path(layout_path)


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class ReduceSettings:
    """Everything that decides what ``layout.h5`` holds (hashed), plus execution knobs.

    The UMAP fields are those of :class:`AtlasUMAP`. ``class_filter`` (a class name, WordNet
    id or index) lays out only that class's rows (:func:`select_class_rows`, with
    ``class_top_n``). ``chunk_rows`` (rows per placement task) and ``n_workers`` (Dask threads)
    do not change the result and are not hashed.
    """

    n_neighbors: int = 20
    min_dist: float = 0.01
    metric: str = "cosine"
    whiten: bool = False
    sample_size: int = 100_000
    placement: Placement = "knn"
    placement_neighbors: int | None = None
    knn_backend: KnnBackend = "auto"
    knn_epsilon: float = 0.1
    knn_aggregate: Literal["median", "mean"] = "median"
    n_epochs: int | None = None
    random_state: int | None = 0
    class_filter: str | None = None
    class_top_n: int = 2000
    chunk_rows: int = 16384
    n_workers: int = 2

    def __post_init__(self) -> None:
        self.estimator()._validate()
        if self.class_top_n < 0:
            raise ValueError(f"class_top_n must be >= 0, got {self.class_top_n}")
        if self.n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {self.n_workers}")

    def estimator(self) -> AtlasUMAP:
        names = AtlasUMAP().get_params().keys()
        return AtlasUMAP(n_components=2, **{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def hashed(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("chunk_rows", "n_workers", "class_filter"):
            d.pop(k)
        return d


@dataclass
class ReduceSummary:
    """What a reduce run did."""

    output: Path
    layer: str = ""
    rows: int = 0
    placed: int = 0
    nonfinite: int = 0
    zero: int = 0
    fit_rows: int = 0
    fit_duplicates: int = 0
    class_index: int | None = None
    fit_seconds: float = 0.0
    place_seconds: float = 0.0
    seconds: float = 0.0
    resumed_rows: int = 0
    up_to_date: bool = False

    @property
    def rows_per_second(self) -> float:
        return (self.rows - self.resumed_rows) / self.place_seconds if self.place_seconds > 0 else 0.0

    def describe(self) -> str:
        if self.up_to_date:
            return f"{self.output} is complete and current; nothing to do"
        cls = f" of class {self.class_index}" if self.class_index is not None else ""
        resumed = f"; {self.resumed_rows} rows were already done" if self.resumed_rows else ""
        return (
            f"laid out {self.rows} rows{cls} of {self.layer} ({self.placed} placed, {self.nonfinite} non-finite "
            f"skipped, {self.zero} all-zero at the centroid); UMAP fit on {self.fit_rows} distinct rows "
            f"({self.fit_duplicates} duplicates) in {self.fit_seconds:.1f} s, placement "
            f"{self.rows_per_second:.0f} rows/s, {self.seconds:.1f} s in all{resumed}; wrote {self.output}"
        )


class ChunkCallback(Protocol):
    """Called after each committed placement chunk with ``(rows_done, rows_total)``."""

    def __call__(self, rows_done: int, rows_total: int) -> None: ...


@dataclass
class _Placed:
    start: int
    xy: np.ndarray
    status: np.ndarray


class _ChunkTask:
    """Place layout rows ``start:stop``: read them, place them, put sampled rows at their fit."""

    def __init__(self, est: AtlasUMAP, path: str, layer: str, row_ids: np.ndarray,
                 sample_ids: np.ndarray, sample_emb: np.ndarray):
        self.est, self.path, self.layer = est, path, layer
        self.row_ids, self.sample_ids, self.sample_emb = row_ids, sample_ids, sample_emb
        self._token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        return self._token

    def __call__(self, start: int, stop: int) -> _Placed:
        rows = self.row_ids[start:stop]
        with ActivationsFile(self.path) as acts:
            x = read_rows(acts.dataset(self.layer, "activations"), rows)
        xy, status = self.est.place(x)
        pos = np.searchsorted(self.sample_ids, rows)
        pos = np.minimum(pos, max(len(self.sample_ids) - 1, 0))
        hit = (self.sample_ids[pos] == rows) & (status == PLACED) if len(self.sample_ids) else np.zeros(len(rows), bool)
        xy[hit] = self.sample_emb[pos[hit]]
        return _Placed(start, xy, status)


def _place_chunk(task: _ChunkTask, start: int, stop: int) -> _Placed:
    """``task(start, stop)`` as a Dask task of its own, for a task scattered to the workers."""
    return task(start, stop)


def _run_chunks(task: _ChunkTask, bounds: Sequence[tuple[int, int]], writer: LayoutWriter, done_from: int,
                total: int, n_workers: int, bar: Any, on_chunk: ChunkCallback | None,
                client: Client | None = None) -> None:
    """Run the chunk tasks on Dask's threaded scheduler, or on a ``distributed.Client``; write each
    chunk as it finishes, commit the prefix.

    Tasks go in waves of ``4 * n_workers`` chunks (``4 *`` the cluster's threads on a client), so
    whatever order the scheduler picks, the committed prefix advances at least once a wave and a
    kill loses at most one wave of work. On a client the task (the fitted model with its
    neighbour index) is sent to the workers once, not with every chunk.
    """
    finished: dict[int, int] = {}
    state = {"next": done_from}

    def record(result: _Placed) -> None:
        stop = result.start + len(result.xy)
        writer.write_rows(result.start, result.xy, result.status)
        bar.update(stop - result.start)
        finished[result.start] = stop
        advanced = False
        while state["next"] in finished:
            state["next"] = finished.pop(state["next"])
            advanced = True
        if advanced:
            writer.commit(state["next"])
            if on_chunk is not None:
                on_chunk(state["next"], total)

    if client is not None:
        from distributed import as_completed

        from atlas.distributed import slim_for_placement, worker_slots

        shipped = copy.copy(task)
        shipped.est = slim_for_placement(task.est)
        remote = client.scatter(shipped, broadcast=True, hash=False)
        wave = 4 * worker_slots(client)
        for w in range(0, len(bounds), wave):
            futures = [client.submit(_place_chunk, remote, s, e, key=f"place-{task._token}-{s:012d}")
                       for s, e in bounds[w:w + wave]]
            for fut in as_completed(futures):
                record(fut.result())
                fut.release()
        return

    import dask
    from dask.callbacks import Callback

    def posttask(key: Any, result: Any, dsk: Any, st: Any, worker_id: Any) -> None:
        if isinstance(result, _Placed):
            record(result)

    fn = dask.delayed(task, pure=False)
    wave = 4 * n_workers
    with Callback(posttask=posttask):
        for w in range(0, len(bounds), wave):
            # the local scheduler runs ready tasks in descending key order: number them downwards
            # so that rows go (roughly) in order and the prefix commits chunk by chunk
            parts = [fn(s, e, dask_key_name=f"place-{task._token}-{total - s:012d}") for s, e in bounds[w:w + wave]]
            dask.compute(*parts, scheduler="threads", num_workers=n_workers)


def reduce_file(
    activations_path: str | os.PathLike,
    layout_path: str | os.PathLike,
    settings: ReduceSettings | None = None,
    *,
    layer: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    on_chunk: ChunkCallback | None = None,
    scheduler: str | Scheduler | Client | None = None,
    **overrides: Any,
) -> ReduceSummary:
    """The reduce stage: ``activations.h5`` -> ``layout.h5`` (format: :mod:`atlas.store.layout`).

    1. Rows: all rows of ``layer``, or those of ``settings.class_filter``.
    2. Fit: :class:`AtlasUMAP` on a seeded sample; the fit and the pickled model
       (``layout.umap.pkl``) are saved before placement starts.
    3. Placement: chunks of ``chunk_rows`` rows placed by ``n_workers`` Dask threads, each chunk
       written as it finishes and counted (``n_rows_done``) once every row below it is written.
    4. Normalisation: :func:`normalize_layout` over the placed rows; all-zero rows go to the
       centroid of the placed rows; ``xy``, ``valid`` and counts are written and the file is
       marked complete.

    Skipped when ``layout_path`` is complete for the same settings and input; resumed when it is
    a partial file of the same settings (a partial file of other settings is refused unless
    ``overwrite``). ``overrides`` replace fields of ``settings``, e.g.
    ``reduce_file(a, l, class_filter="tabby cat")``. ``on_chunk(rows_done, rows_total)`` is
    called after each commit (raise from it to stop early).

    ``scheduler`` runs the placement chunks on Dask distributed instead of local threads: a
    scheduler address, ``"local[:N]"``, an :class:`atlas.distributed.Scheduler` or a
    ``distributed.Client`` (workers must see ``activations_path`` at the same path). The fit
    runs here either way.
    """
    t0 = time.perf_counter()
    settings = dataclasses.replace(settings or ReduceSettings(), **overrides)
    layout_path = Path(layout_path)
    summary = ReduceSummary(layout_path)
    class_idx = None if settings.class_filter is None else resolve_class(settings.class_filter)
    with ActivationsFile(activations_path) as acts:
        layer = acts.layer(layer)
        summary.layer, summary.class_index = layer, class_idx
        full = dict(settings.hashed(), layer=layer, class_index=class_idx,
                    source_settings_hash=str(acts.attrs.get("settings_hash", "")))
        digest = settings_hash(full)
        found = LayoutWriter.probe(layout_path)
        if found is not None and not overwrite and found.get("settings_hash") == digest:
            if found.get("complete"):
                log.info("%s is complete and current; skipping reduce", layout_path)
                summary.up_to_date = True
                return summary
        elif found is not None and not overwrite and not found.get("complete"):
            raise ArtifactError(
                f"{layout_path} holds a partial reduce made with other settings (hash {found.get('settings_hash')}, "
                f"now {digest}). Rerun with the old settings to finish it, or overwrite it (--overwrite)."
            )
        resume = found is not None and not overwrite and found.get("settings_hash") == digest
        pkl = model_path(layout_path)
        est: AtlasUMAP | None = None
        if resume:
            writer = LayoutWriter.reopen(layout_path)
            row_ids = writer.row_ids()
            summary.resumed_rows = writer.n_rows_done
            if writer.has_fit:
                est = _load_model(pkl, digest)
            log.info("resuming %s at row %d of %d", layout_path, writer.n_rows_done, writer.n_rows)
        else:
            if class_idx is not None:
                row_ids = select_class_rows(acts, layer, class_idx, settings.class_top_n)
                log.info("class %d: %d rows selected", class_idx, len(row_ids))
            else:
                row_ids = np.arange(acts.n_rows(layer), dtype=np.int64)
            if not len(row_ids):
                raise ValueError(f"no rows to lay out in {activations_path} layer {layer}"
                                 + (f" for class {class_idx}" if class_idx is not None else ""))
            writer = LayoutWriter.create(layout_path, row_ids, full, {
                "model": acts.model, "layer": layer, "source": str(Path(activations_path)),
                "source_settings_hash": str(acts.attrs.get("settings_hash", "")),
                "class_index": -1 if class_idx is None else class_idx,
                "class_name": "" if settings.class_filter is None else str(settings.class_filter),
                "model_file": pkl.name,
            }, chunk_rows=settings.chunk_rows)
        try:
            if est is None:
                tf = time.perf_counter()
                est = _fit_sample(acts, layer, row_ids, settings)
                summary.fit_seconds = time.perf_counter() - tf
                writer.write_fit(row_ids[est.fit_indices_], est.embedding_, row_ids[est.sample_indices_],
                                 est.sample_embedding_, est.n_duplicates_)
                _save_model(est, pkl, digest)
            sample_ids, sample_emb = writer.read_sample()
            summary.fit_rows = len(est.fit_indices_)
            summary.fit_duplicates = int(est.n_duplicates_)

            m = writer.n_rows
            start = writer.n_rows_done
            bounds = [(s, min(m, s + settings.chunk_rows)) for s in range(start, m, settings.chunk_rows)]
            tp = time.perf_counter()
            if bounds:
                task = _ChunkTask(est, str(Path(activations_path).absolute()), layer, row_ids, sample_ids, sample_emb)
                with tqdm(total=m, initial=start, unit="row", desc=f"reduce {layer}", disable=not progress,
                          leave=False) as bar:
                    if scheduler is None:
                        _run_chunks(task, bounds, writer, start, m, settings.n_workers, bar, on_chunk)
                    else:
                        from atlas.distributed import client_for

                        with client_for(scheduler) as client:
                            _run_chunks(task, bounds, writer, start, m, settings.n_workers, bar, on_chunk, client)
            summary.place_seconds = time.perf_counter() - tp
            counts = _finish(writer, row_ids)
        finally:
            writer.close()
    summary.rows = len(row_ids)
    summary.placed, summary.nonfinite, summary.zero = counts["n_placed"], counts["n_nonfinite"], counts["n_zero"]
    summary.seconds = time.perf_counter() - t0
    log.info(summary.describe())
    return summary


def _fit_sample(acts: ActivationsFile, layer: str, row_ids: np.ndarray, settings: ReduceSettings) -> AtlasUMAP:
    """Fit the estimator on a seeded sample of the layout rows; indices refer to ``row_ids``."""
    est = settings.estimator()
    est._validate()
    rng = np.random.default_rng(settings.random_state)
    n = len(row_ids)
    pos = np.arange(n) if n <= settings.sample_size else np.sort(rng.choice(n, settings.sample_size, replace=False))
    x = read_rows(acts.dataset(layer, "activations"), row_ids[pos])
    est.sample_size = len(pos)  # the sample is drawn here; fit uses all of it
    est.fit(x)
    est.sample_size = settings.sample_size
    est.fit_indices_ = pos[est.fit_indices_]
    est.sample_indices_ = pos[est.sample_indices_]
    return est


def _save_model(est: AtlasUMAP, path: Path, digest: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump({"settings_hash": digest, "model": est}, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def _load_model(path: Path, digest: str) -> AtlasUMAP | None:
    if not path.is_file():
        log.warning("%s is missing; refitting (same seed, same fit)", path)
        return None
    try:
        with open(path, "rb") as fh:
            blob = pickle.load(fh)
    except Exception as e:  # a truncated or foreign pickle: refit rather than fail
        log.warning("%s is unreadable (%s); refitting", path, e)
        return None
    if blob.get("settings_hash") != digest:
        log.warning("%s belongs to other settings; refitting", path)
        return None
    return blob["model"]


def _finish(writer: LayoutWriter, row_ids: np.ndarray) -> dict[str, int]:
    raw, status = writer.read_raw()
    placed = status == PLACED
    if not placed.any():
        raise ValueError("no row could be placed (all non-finite or all-zero); check the activations")
    lo, hi = layout_bounds(raw[placed])
    xy = apply_bounds(raw, lo, hi)
    xy[status == NONFINITE] = np.nan
    zero = status == ZERO
    if zero.any():
        xy[zero] = xy[placed].mean(axis=0)
        log.info("%d all-zero rows put at the layout centroid and left out of the grid", int(zero.sum()))
    bad = np.flatnonzero(status == NONFINITE)
    if len(bad):
        log.warning("%d rows have NaN/inf activations and were skipped (layer rows %s%s)", len(bad),
                    row_ids[bad[:5]].tolist(), ", ..." if len(bad) > 5 else "")
    return writer.finish(xy, status, lo, hi)


# --------------------------------------------------------------------------- reuse of a layout


def load_placer(layout_path: str | os.PathLike, activations_path: str | os.PathLike | None = None) -> AtlasUMAP:
    """The fitted estimator of a layout, to place new activation vectors on it.

    From the pickle beside the layout when present; otherwise rebuilt from the fit rows stored
    in ``layout.h5`` and their activations (``activations_path``, default the layout's source)
    for knn placement (``placement="umap"`` needs the pickle).
    """
    layout = read_layout(layout_path)
    pkl = model_path(layout_path)
    if pkl.is_file():
        est = _load_model(pkl, str(layout.attrs.get("settings_hash")))
        if est is not None:
            return est
    from atlas.store.layout import read_fit

    settings = layout.settings
    fit_ids, fit_emb = read_fit(layout_path)
    src = activations_path or layout.attrs.get("source")
    if not src:
        raise ValueError(f"{layout_path} names no activations file; pass activations_path")
    names = AtlasUMAP().get_params().keys()
    est = AtlasUMAP(**{k: v for k, v in settings.items() if k in names})
    if est.whiten:
        raise ValueError(f"{layout_path} was made with whiten=True and its model pickle {pkl} is missing; "
                         "rerun reduce to recreate it")
    with ActivationsFile(src) as acts:
        x = read_rows(acts.dataset(layout.layer, "activations"), fit_ids)
    est.whitening_ = None
    est.n_features_in_ = x.shape[1]
    est.embedding_ = fit_emb
    est.fit_indices_ = fit_ids
    est.placer_ = KNNPlacer(est._prepare(x), fit_emb, metric=est.metric,
                            n_neighbors=est.placement_neighbors or est.n_neighbors,
                            backend=est.knn_backend, epsilon=est.knn_epsilon, aggregate=est.knn_aggregate,
                            random_state=est.random_state)
    est.placement = "knn"
    return est


def project(layout_path: str | os.PathLike, x: np.ndarray, activations_path: str | os.PathLike | None = None,
            est: AtlasUMAP | None = None) -> np.ndarray:
    """``(n, 2)`` positions in [0, 1] of new activation vectors ``x`` ``(n, C)`` on a layout.

    Places with the layout's fitted model and normalises with the layout's own bounds, so the
    result lands on the same map; NaN for rows the metric cannot place.
    """
    est = est or load_placer(layout_path, activations_path)
    layout = read_layout(layout_path)
    raw = est.transform(np.atleast_2d(x))
    return apply_bounds(raw, np.asarray(layout.attrs["norm_lo"]), np.asarray(layout.attrs["norm_hi"]))


__all__ = [
    "AtlasUMAP",
    "ChunkCallback",
    "KNNPlacer",
    "ReduceSettings",
    "ReduceSummary",
    "apply_bounds",
    "class_attribution",
    "comparison_file",
    "comparison_layout",
    "layout_bounds",
    "load_placer",
    "membership_weights",
    "normalize_layout",
    "project",
    "reduce_file",
    "resolve_class",
    "select_class_rows",
]
