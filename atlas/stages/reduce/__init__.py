"""The reduce stage: a 2-D layout of a layer's activation vectors.

Carter et al., "Activation Atlas" (Distill 2019) lay out the activations with UMAP (cosine
metric) and rescale the result into the unit square with a percentile clip
(:func:`normalize_layout`). UMAP is fitted on a sample (default 100,000 rows); every other row
is *placed* into the fitted layout:

- ``placement="refine"`` (default): the row's ``n_neighbors`` nearest fitted rows (cosine), found
  with an inverted-file index over the fitted rows' 64 leading principal axes
  (:class:`IVFIndex`, built once per fit) or, for small fits, an exact matrix-product search;
  the row starts at the per-axis *median* of their positions, then 25 epochs of UMAP's own
  optimisation of new points against the fixed, fitted embedding move it
  (:func:`refine_positions`, the second half of ``UMAP.transform``, with 2 negative samples).
  ``UMAP.transform`` starts from the membership-weighted *mean* of the neighbours, which lands
  between clusters when the neighbours straddle two; the median stays inside one. On 100,000
  held-out real ``inception4c`` rows of a 965k-row atlas (fit on 100k) it scored
  trustworthiness 0.882 against ``UMAP.transform``'s 0.878, 13x faster
  (``benchmarks/README.md``). Metrics other than cosine and euclidean use UMAP's own
  NNDescent index.
- ``placement="knn"``: the median alone (0.862 there with NNDescent neighbours).
- ``placement="umap"``: ``UMAP.transform`` itself.

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

The package, one idea a module: :mod:`~atlas.stages.reduce.bounds` (normalisation),
:mod:`~atlas.stages.reduce.placement` (placing rows into a fitted layout), :mod:`~atlas.stages.reduce.estimator`
(:class:`AtlasUMAP`), :mod:`~atlas.stages.reduce.classes` (class and comparison layouts) and
:mod:`~atlas.stages.reduce.stage` (the stage over files, and reuse of a finished layout).
"""

from atlas.stages.reduce.bounds import apply_bounds, layout_bounds, normalize_layout
from atlas.stages.reduce.classes import (
    class_attribution,
    comparison_file,
    comparison_layout,
    resolve_class,
    select_class_rows,
)
from atlas.stages.reduce.estimator import AtlasUMAP
from atlas.stages.reduce.placement import IVFIndex, KNNPlacer, membership_weights, refine_positions
from atlas.stages.reduce.stage import ChunkCallback, ReduceSettings, ReduceSummary, load_placer, project, reduce_file

__all__ = [
    "AtlasUMAP",
    "ChunkCallback",
    "IVFIndex",
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
    "refine_positions",
    "resolve_class",
    "select_class_rows",
]
