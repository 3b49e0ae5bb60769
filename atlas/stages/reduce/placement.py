"""Placement of rows that UMAP was not fitted on, into the fitted layout.

- ``"knn"``: the per-axis median of the positions of the row's nearest fitted rows
  (:class:`KNNPlacer`).
- ``"refine"`` (default): the same start, then epochs of UMAP's own optimisation of the new
  points against the fixed, fitted embedding (:func:`refine_positions`), the step that
  ``UMAP.transform`` runs from a weighted-mean start. The neighbours come from
  :class:`IVFIndex` (inverted lists over the rows' leading principal axes).
  On 100,000 held-out real ``inception4c`` rows: trustworthiness 0.882 against
  ``UMAP.transform``'s 0.878, 13x faster (``benchmarks/README.md``).
- ``"umap"``: ``UMAP.transform`` itself.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

Placement = Literal["refine", "knn", "umap"]

#: Epochs of :func:`refine_positions` by default (``UMAP.transform`` runs 30 for large batches).
#: On 100,000 real rows (2 negative samples): 20 epochs 0.881, 25 0.882, 30 0.882, against
#: ``UMAP.transform``'s 0.878 (benchmarks/README.md).
REFINE_EPOCHS = 25
#: Repulsive samples per attractive one in the refinement (UMAP's own rate is 5). On 100,000
#: real rows 2 placed more trustworthily (0.882 against 0.876 with 5, 25 epochs) in 70% of the
#: time: the start is already inside the right cluster, so less repulsion is needed.
REFINE_NEGATIVE_RATE = 2.0
KnnBackend = Literal["auto", "ivf", "index", "brute"]

#: Fits with at most this many distinct rows are searched exactly (one matrix product per
#: chunk); larger ones use an inverted-file index (:class:`IVFIndex`, cosine and euclidean) or
#: the NNDescent index (other metrics), whose query cost barely grows with the fit.
BRUTE_MAX_FIT = 8192


def _faiss() -> Any:
    """The faiss module. Its loader logs, at INFO, each CPU-specific build it could not load
    before the one it does (tracebacks a user need not see); those go at WARNING and up only."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


class IVFIndex:
    """Approximate nearest fitted rows: PCA to ``dims`` axes, then inverted lists.

    The fitted rows are projected on their ``dims`` leading principal axes and clustered
    (k-means, ``4 sqrt(F)`` lists); a query scans the lists of its ``nprobe`` nearest
    centroids in the projected space (faiss's ``IndexIVFFlat``) and keeps the ``k`` nearest
    rows there, with their distances there. Its recall of the exact 20 neighbours is low
    (about 0.45 on real ``inception4c`` rows), but the placement built on it, median start
    plus UMAP refinement, is as trustworthy as ``UMAP.transform`` at a fraction of the time of
    pynndescent's query (benchmarks/README.md): refinement needs rows from the right
    neighbourhood, not the exact nearest ones. Re-ranking the rows found by their full-space
    distance was measured too: the same trustworthiness (0.883 with it, 0.882 without), 20% more time.

    Args:
        data: ``(F, C)`` float32 prepared fitted rows (unit length for cosine).
        metric: ``"cosine"`` (on unit rows: euclidean order) or ``"euclidean"``.
        dims: principal axes kept for the search (at most ``C``).
        nprobe: lists scanned per query.
        seed: seeds the PCA and k-means samples and the clustering.
    """

    def __init__(self, data: np.ndarray, metric: str = "cosine", dims: int = 64, nprobe: int = 4, seed: int = 0):
        faiss = _faiss()

        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"the inverted-file index supports metric 'cosine' or 'euclidean', not {metric!r}")
        data = np.ascontiguousarray(data, np.float32)
        n, c = data.shape
        self.metric = metric
        rng = np.random.default_rng(seed)
        sample = data[np.sort(rng.choice(n, min(n, 65536), replace=False))].astype(np.float64)
        self.mean = sample.mean(axis=0).astype(np.float32)
        centred = sample - self.mean
        _, vecs = np.linalg.eigh(centred.T @ centred)
        self.dims = int(min(dims, c))
        self.proj = np.ascontiguousarray(vecs[:, ::-1][:, : self.dims], np.float32)
        reduced = self._reduce(data)
        nlist = int(max(1, min(round(4 * np.sqrt(n)), n // 39)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dims), self.dims, nlist, faiss.METRIC_L2)
        index.cp.seed = int(seed)
        index.train(reduced[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))])
        index.add(reduced)
        index.nprobe = int(min(nprobe, nlist))
        self.index = index
        self.nlist = nlist

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((np.asarray(x, np.float32) - self.mean) @ self.proj)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (n, k) int64, distances (n, k) float32)``, ascending, ``-1`` where the
        scanned lists held fewer than ``k`` rows. Distances are measured on the leading axes
        (never more than the full-space ones): euclidean, or for unit rows the cosine distance
        ``|a - b|^2 / 2``."""
        sq, idx = self.index.search(self._reduce(x), k)
        sq = np.maximum(sq, 0)
        dist = sq / 2 if self.metric == "cosine" else np.sqrt(sq)
        return idx.astype(np.int64), dist.astype(np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["index"] = _faiss().serialize_index(self.index)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state["index"] = _faiss().deserialize_index(state["index"])
        self.__dict__.update(state)


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


@dataclass(frozen=True)
class LayoutOptimizer:
    """The settings of a fitted UMAP's layout optimisation that refinement reuses.

    ``a``, ``b``: the curve of the low-dimensional similarities (from ``min_dist``);
    ``gamma``: repulsion strength; ``alpha``: initial learning rate (UMAP.transform uses the
    fit's, divided by 4); ``negative_sample_rate``: repulsive samples per attractive one.
    """

    a: float
    b: float
    gamma: float = 1.0
    alpha: float = 0.25
    negative_sample_rate: float = 5.0

    @classmethod
    def for_min_dist(cls, min_dist: float, spread: float = 1.0) -> LayoutOptimizer:
        """The settings a ``umap.UMAP(min_dist=..., spread=...)`` with default rates fits with."""
        from umap.umap_ import find_ab_params

        a, b = find_ab_params(spread, min_dist)
        return cls(float(a), float(b))

    def for_refinement(self) -> LayoutOptimizer:
        """These settings with :data:`REFINE_NEGATIVE_RATE` negative samples, as the
        ``"refine"`` placement of a new fit uses them."""
        return dataclasses.replace(self, negative_sample_rate=REFINE_NEGATIVE_RATE)

    @classmethod
    def of(cls, fitted_umap: Any) -> LayoutOptimizer:
        """The settings of a fitted ``umap.UMAP``, as its ``transform`` uses them."""
        return cls(float(fitted_umap._a), float(fitted_umap._b), float(fitted_umap.repulsion_strength),
                   float(fitted_umap._initial_alpha) / 4.0, float(fitted_umap.negative_sample_rate))


def refine_positions(
    init: np.ndarray,
    indices: np.ndarray,
    dists: np.ndarray,
    embedding: np.ndarray,
    optimizer: LayoutOptimizer,
    n_epochs: int = REFINE_EPOCHS,
    seed: int = 0,
) -> np.ndarray:
    """UMAP's optimisation of new points against a fixed, fitted embedding, from a given start.

    This is the second half of ``UMAP.transform`` (umap-learn 0.5): the fuzzy membership
    strengths of each new row's neighbours (``smooth_knn_dist`` with local connectivity 0,
    bipartite ``compute_membership_strengths``), edges weaker than ``max / n_epochs`` dropped,
    then ``optimize_layout_euclidean`` moving only the new points (attraction to their fitted
    neighbours, repulsion from random fitted points). ``UMAP.transform`` starts from the
    membership-weighted mean of the neighbours; here the start is whatever ``init`` holds (the
    median placement), which already sits inside a cluster, so fewer epochs suffice.

    Args:
        init: ``(n, d)`` starting positions of the new rows.
        indices, dists: ``(n, k)`` their fitted neighbours (ascending distance).
        embedding: ``(F, d)`` the fitted layout (not changed).
        optimizer: the fitted UMAP's curve and rates (:class:`LayoutOptimizer`).
        n_epochs: SGD epochs.
        seed: seeds the negative sampling; the same rows give the same positions.

    Returns:
        ``(n, d)`` float32 positions.
    """
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import compute_membership_strengths, make_epochs_per_sample, smooth_knn_dist

    if len(init) == 0 or n_epochs < 1:
        return np.asarray(init, np.float32).copy()
    k = indices.shape[1]
    d = np.ascontiguousarray(dists, np.float32)
    sigmas, rhos = smooth_knn_dist(d, float(k), local_connectivity=0.0)
    rows, cols, vals, _ = compute_membership_strengths(
        np.ascontiguousarray(indices, np.int32), d, sigmas, rhos, bipartite=True)
    keep = vals >= vals.max() / float(n_epochs)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    epochs_per_sample = make_epochs_per_sample(vals.astype(np.float64), n_epochs)
    rng_state = np.random.RandomState(seed).randint(np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1,
                                                    3).astype(np.int64)
    head = np.ascontiguousarray(init, np.float32).copy()
    tail = np.ascontiguousarray(embedding, np.float32).copy()
    return optimize_layout_euclidean(
        head, tail, rows.astype(np.int32), cols.astype(np.int32), n_epochs, len(tail), epochs_per_sample,
        optimizer.a, optimizer.b, rng_state, optimizer.gamma, optimizer.alpha, optimizer.negative_sample_rate,
        parallel=False, move_other=False,
    ).astype(np.float32)


def _fill_missing(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a search found fewer than k rows (index ``-1``), the nearest one found stands in."""
    missing = idx < 0
    if missing.any():
        idx = np.where(missing, idx[:, :1], idx)
        dist = np.where(missing, dist[:, :1], dist)
    return idx, dist


class KNNPlacer:
    """Place rows by their nearest fitted rows (see the module docstring).

    Args:
        data: ``(F, C)`` float32 fitted rows, *prepared* (whitened if so, unit-normalised for
            cosine).
        embedding: ``(F, d)`` their layout coordinates.
        metric: the UMAP metric; the exact search supports ``"cosine"`` and ``"euclidean"``.
        n_neighbors: neighbours averaged per row.
        backend: ``"brute"`` (exact matrix-product search), ``"ivf"`` (:class:`IVFIndex`, built
            here; distances on the 64 leading principal axes), ``"index"`` (NNDescent) or
            ``"auto"`` (brute up to ``BRUTE_MAX_FIT`` fitted rows, then ivf for cosine and
            euclidean, the NNDescent index for other metrics).
        index: a fitted ``pynndescent.NNDescent`` over ``data`` (UMAP's own), else built lazily
            (``"index"`` backend only).
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
        optimizer: LayoutOptimizer | None = None,
        refine_epochs: int = REFINE_EPOCHS,
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
            backend = ("brute" if len(self.data) <= BRUTE_MAX_FIT else "ivf") if exact_ok else "index"
        if backend in ("brute", "ivf") and metric not in ("cosine", "euclidean"):
            raise ValueError(f"knn_backend={backend!r} supports metric 'cosine' or 'euclidean', not {metric!r}; "
                             "use knn_backend='index'")
        self.backend = backend
        self.index = index
        self.ivf = IVFIndex(self.data, metric, seed=0 if random_state is None else int(random_state)) \
            if backend == "ivf" else None
        self.epsilon = epsilon
        self.random_state = random_state
        self.optimizer = optimizer
        self.refine_epochs = int(refine_epochs)
        self._token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._sqnorm = (self.data.astype(np.float64) ** 2).sum(axis=1) if metric == "euclidean" else None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("ivf", None)  # placers saved before the inverted-file index keep their backend
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
        if self.backend == "ivf":
            return self._ivf_kneighbors(x, k)
        if self.backend == "index":
            with self._lock:  # NNDescent.query reuses per-index work buffers; build it once
                idx, dist = self._ensure_index().query(x, k=k, epsilon=self.epsilon)
            return _fill_missing(idx.astype(np.int64), dist.astype(np.float32))
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

    def _ivf_kneighbors(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        idx, dist = self.ivf.search(x, k)
        if (idx < 0).all(axis=1).any():
            raise RuntimeError("the inverted-file index found no candidate for a row; rebuild it with a larger nprobe")
        idx, dist = _fill_missing(idx, dist)
        # a zero distance in the reduced space marks an identical fitted row only if it is one
        # in the full space too (rows may differ off the leading axes)
        zero = np.flatnonzero(dist[:, 0] <= 1e-6)
        if len(zero):
            diff = x[zero] - self.data[idx[zero, 0]]
            full = np.sqrt((diff.astype(np.float64) ** 2).sum(axis=1))
            dist[zero, 0] = np.where(full <= 1e-6, 0.0, np.maximum(dist[zero, 0], 2e-6))
        return idx, dist

    def place(self, x: np.ndarray, refine: bool = False) -> np.ndarray:
        """``(n, d)`` float32 positions of prepared rows ``x``: median (or weighted mean) of the
        neighbours', then, with ``refine``, :func:`refine_positions` from there."""
        if len(x) == 0:
            return np.empty((0, self.embedding.shape[1]), np.float32)
        idx, dist = self.kneighbors(x)
        pts = self.embedding[idx].astype(np.float64)  # (n, k, d)
        if self.aggregate == "median":
            xy = np.median(pts, axis=1)
        else:
            xy = np.einsum("nk,nkd->nd", membership_weights(dist), pts)
        xy = xy.astype(np.float32)
        if refine:
            optimizer = getattr(self, "optimizer", None)
            if optimizer is None:
                raise ValueError("this placer has no UMAP optimiser settings to refine with (a layout saved by an "
                                 "older atlas); use placement 'knn' or refit with atlas reduce --overwrite")
            seed = 0 if self.random_state is None else int(self.random_state)
            xy = refine_positions(xy, idx, dist, self.embedding, optimizer,
                                  getattr(self, "refine_epochs", REFINE_EPOCHS), seed=seed)
        exact = dist[:, 0] <= 1e-6  # identical to a fitted row: take its position
        xy[exact] = self.embedding[idx[exact, 0]]
        return xy
