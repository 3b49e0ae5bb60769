"""The sklearn-style estimator of the reduce stage: UMAP fitted on a sample, fast placement of the rest."""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from atlas.checks import SettingError
from atlas.stages.reduce.placement import REFINE_EPOCHS, KnnBackend, KNNPlacer, LayoutOptimizer, Placement
from atlas.store.layout import NONFINITE, PLACED, ZERO

log = logging.getLogger(__name__)

_NORMALISED_METRICS = ("cosine", "correlation")
#: Metrics accepted without asking UMAP for its list (importing it takes a while).
_COMMON_METRICS = ("cosine", "correlation", "euclidean", "manhattan", "l1", "l2", "chebyshev")
_PLACEMENTS = ("refine", "knn", "umap")


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
        placement: how other rows are placed (:mod:`atlas.stages.reduce.placement`): ``"refine"``
            (default: kNN median, then ``refine_epochs`` of UMAP's optimisation), ``"knn"``
            (median only, fastest) or ``"umap"`` (``UMAP.transform``).
        refine_epochs: epochs of the ``"refine"`` placement.
        placement_neighbors: neighbours averaged by knn placement (default ``n_neighbors``).
        knn_backend: ``"auto"``, ``"ivf"`` (inverted lists over PCA-reduced rows), ``"index"``
            (NNDescent) or ``"brute"`` (exact), see :class:`KNNPlacer`.
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
        placement: Placement = "refine",
        refine_epochs: int = REFINE_EPOCHS,
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
        self.refine_epochs = refine_epochs
        self.knn_backend = knn_backend
        self.knn_epsilon = knn_epsilon
        self.knn_aggregate = knn_aggregate
        self.chunk_rows = chunk_rows
        self.n_epochs = n_epochs
        self.random_state = random_state

    # ---- validation and preparation

    def _validate(self) -> None:
        if not (isinstance(self.n_neighbors, (int, np.integer)) and self.n_neighbors >= 2):
            raise SettingError("n_neighbors", f"must be an integer >= 2 (the paper uses 20-50), got {self.n_neighbors!r}")
        if not (0.0 <= self.min_dist <= 1.0):
            raise SettingError("min_dist", f"must lie in [0, 1] (the paper uses 0.01-0.05), got {self.min_dist!r}")
        if self.n_components < 1:
            raise SettingError("n_components", f"must be >= 1, got {self.n_components}")
        if self.sample_size < 3:
            raise SettingError("sample_size", f"must be at least 3 (default 100000), got {self.sample_size}")
        if self.placement not in _PLACEMENTS:
            raise SettingError("placement", f"must be one of {_PLACEMENTS}, not {self.placement!r}")
        if self.refine_epochs < 1:
            raise SettingError("refine_epochs", f"must be >= 1, got {self.refine_epochs}")
        if self.knn_backend not in ("auto", "ivf", "index", "brute"):
            raise SettingError("knn_backend", f"must be 'auto', 'ivf', 'index' or 'brute', not {self.knn_backend!r}")
        if self.placement_neighbors is not None and self.placement_neighbors < 1:
            raise SettingError("placement_neighbors", f"must be >= 1 or None, got {self.placement_neighbors}")
        if self.chunk_rows < 1:
            raise SettingError("chunk_rows", f"must be >= 1, got {self.chunk_rows}")
        if self.knn_epsilon < 0:
            raise SettingError("knn_epsilon", f"must be >= 0, got {self.knn_epsilon}")
        if self.n_epochs is not None and self.n_epochs < 1:
            raise SettingError("n_epochs", f"must be >= 1 or None (UMAP's default), got {self.n_epochs}")
        if isinstance(self.metric, str) and self.metric not in _COMMON_METRICS:
            from umap.distances import named_distances  # imported only for a metric named otherwise

            if self.metric not in named_distances:
                raise SettingError("metric", f"must be a UMAP metric (e.g. cosine, euclidean, correlation), "
                                             f"not {self.metric!r}")
        if self.knn_aggregate not in ("median", "mean"):
            raise SettingError("knn_aggregate", f"must be 'median' or 'mean', not {self.knn_aggregate!r}")

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
            optimizer=LayoutOptimizer.of(self.umap_).for_refinement(), refine_epochs=self.refine_epochs,
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
            if how in ("knn", "refine"):
                out[ok] = self.placer_.place(prep, refine=how == "refine")
            elif how == "umap":
                with self.placer_._lock:
                    out[ok] = self.umap_.transform(prep)
            else:
                raise ValueError(f"placement must be one of {_PLACEMENTS}, not {how!r}")
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
