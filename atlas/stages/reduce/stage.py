"""The reduce stage over files: ``activations.h5`` -> ``layout.h5``, chunked, resumable, optionally on Dask; and reuse of a finished layout (placing new rows with its fitted model)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from tqdm.auto import tqdm

from atlas.checks import at_least
from atlas.stages.reduce.bounds import apply_bounds, layout_bounds
from atlas.stages.reduce.classes import resolve_class, select_class_rows
from atlas.stages.reduce.estimator import AtlasUMAP
from atlas.stages.reduce.placement import REFINE_EPOCHS, KnnBackend, KNNPlacer, LayoutOptimizer, Placement
from atlas.store.activations import ActivationsFile
from atlas.store.common import settings_hash
from atlas.store.layout import NONFINITE, PLACED, ZERO, LayoutWriter, model_path, read_layout, read_rows
from atlas.store.lineage import check_output
from atlas.store.pickles import load_pickle, save_pickle

if TYPE_CHECKING:
    from distributed import Client

    from atlas.runtime.distributed import Scheduler

log = logging.getLogger(__name__)



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
    placement: Placement = "refine"
    refine_epochs: int = REFINE_EPOCHS
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
        at_least("class_top_n", self.class_top_n, 0)
        at_least("n_workers", self.n_workers, 1)

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
        keep_fitted(xy, status, rows, self.sample_ids, self.sample_emb)
        return _Placed(start, xy, status)


def keep_fitted(xy: np.ndarray, status: np.ndarray, rows: np.ndarray, sample_ids: np.ndarray,
                sample_emb: np.ndarray) -> None:
    """In place: the placed ``rows`` that were in the fit sample (``sample_ids``, sorted) keep the
    position the fit gave them (``sample_emb``) instead of their placement."""
    if not len(sample_ids):
        return
    pos = np.minimum(np.searchsorted(sample_ids, rows), len(sample_ids) - 1)
    hit = (sample_ids[pos] == rows) & (status == PLACED)
    xy[hit] = sample_emb[pos[hit]]


def slim_for_placement(est: AtlasUMAP) -> AtlasUMAP:
    """A shallow copy of a fitted :class:`AtlasUMAP` without the UMAP model when placement is knn:
    the workers need the placer's rows and index, not UMAP's graph."""
    if getattr(est, "placement", None) != "knn" or not hasattr(est, "umap_"):
        return est
    slim = copy.copy(est)
    del slim.umap_
    return slim


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

        from atlas.runtime.distributed import worker_slots

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
    a partial file of the same settings; made again when its input (``activations.h5``) changed
    since. A file (finished or partial) of other settings is kept and
    :class:`~atlas.store.common.SettingsChangedError` names the changes, unless ``overwrite``.
    ``overrides`` replace fields of ``settings``, e.g. ``reduce_file(a, l, class_filter="tabby cat")``.
    ``on_chunk(rows_done, rows_total)`` is called after each commit (raise from it to stop early).

    ``scheduler`` runs the placement chunks on Dask distributed instead of local threads: a
    scheduler address, ``"local[:N]"``, an :class:`atlas.runtime.distributed.Scheduler` or a
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
        # other settings than the file's: SettingsChangedError (nothing touched) unless overwrite
        found = check_output(layout_path, "layout", full, stage="reduce", inputs={"activations": activations_path},
                             input_keys=("source_settings_hash",), overwrite=overwrite)
        if found.state == "current":
            log.info("%s is complete and current; skipping reduce", layout_path)
            summary.up_to_date = True
            return summary
        if found.state == "stale":
            log.warning("%s: %s; laying it out again", layout_path, "; ".join(found.reasons))
        resume = found.state == "partial"
        pkl = model_path(layout_path)
        est: AtlasUMAP | None = None
        if resume:
            writer = LayoutWriter.reopen(layout_path)
            row_ids = writer.row_ids()
            summary.resumed_rows = writer.n_rows_done
            if writer.has_fit:
                est = load_fit_model(pkl, digest)
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
            if class_idx is not None and len(row_ids) < 3:
                raise ValueError(f"class {class_idx} selects only {len(row_ids)} rows of {activations_path}; a class "
                                 "atlas needs at least 3 (collect more photos of the class, or raise class_top_n)")
            writer = LayoutWriter.create(layout_path, row_ids, full, {
                "model": acts.model, "layer": layer, "source": str(Path(activations_path)),
                "source_settings_hash": str(acts.attrs.get("settings_hash", "")),
                "class_index": -1 if class_idx is None else class_idx,
                "class_name": "" if settings.class_filter is None else str(settings.class_filter),
                "model_file": pkl.name,
            }, chunk_rows=settings.chunk_rows, inputs={"activations": activations_path})
        try:
            if est is None:
                tf = time.perf_counter()
                est = _fit_sample(acts, layer, row_ids, settings)
                summary.fit_seconds = time.perf_counter() - tf
                writer.write_fit(row_ids[est.fit_indices_], est.embedding_, row_ids[est.sample_indices_],
                                 est.sample_embedding_, est.n_duplicates_)
                save_fit_model(est, pkl, digest)
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
                        from atlas.runtime.distributed import client_for

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


def save_fit_model(est: AtlasUMAP, path: Path, digest: str) -> None:
    """Pickle a fitted estimator beside its layout, with the hash of the settings it was fitted with."""
    save_pickle({"settings_hash": digest, "model": est}, path)


def load_fit_model(path: Path, digest: str) -> AtlasUMAP | None:
    """The estimator :func:`save_fit_model` pickled for ``digest``; None (refit) when the pickle is
    missing, unreadable or of other settings, each said in the log."""
    if not path.is_file():
        log.warning("%s is missing; refitting (same seed, same fit)", path)
        return None
    try:
        blob = load_pickle(path)
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
    xy = layout_xy(raw, status, lo, hi)
    zero = status == ZERO
    if zero.any():
        log.info("%d all-zero rows put at the layout centroid and left out of the grid", int(zero.sum()))
    bad = np.flatnonzero(status == NONFINITE)
    if len(bad):
        log.warning("%d rows have NaN/inf activations and were skipped (layer rows %s%s)", len(bad),
                    row_ids[bad[:5]].tolist(), ", ..." if len(bad) > 5 else "")
    return writer.finish(xy, status, lo, hi)


def layout_xy(raw: np.ndarray, status: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The finished positions of placed rows ``raw`` in the box ``lo``..``hi``: non-finite rows NaN,
    all-zero rows at the centroid of the placed ones (the middle when none was placed)."""
    xy = apply_bounds(raw, lo, hi)
    xy[status == NONFINITE] = np.nan
    zero = status == ZERO
    if zero.any():
        placed = status == PLACED
        xy[zero] = xy[placed].mean(axis=0) if placed.any() else 0.5
    return xy


def load_placer(layout_path: str | os.PathLike, activations_path: str | os.PathLike | None = None) -> AtlasUMAP:
    """The fitted estimator of a layout, to place new activation vectors on it.

    From the pickle beside the layout when present; otherwise rebuilt from the fit rows stored
    in ``layout.h5`` and their activations (``activations_path``, default the layout's source)
    for ``"refine"``/``"knn"`` placement (``placement="umap"`` needs the pickle; without it such a
    layout places with ``"refine"``).
    """
    layout = read_layout(layout_path)
    if layout.attrs.get("aligned"):
        raise ValueError(f"{layout_path} is side {layout.attrs.get('aligned_side')} of the aligned atlas "
                         f"{layout.attrs['aligned']!r}, laid out on joint vectors of both sides; new rows cannot be "
                         "placed on it from one layer's activations")
    pkl = model_path(layout_path)
    if pkl.is_file():
        est = load_fit_model(pkl, str(layout.attrs.get("settings_hash")))
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
                            random_state=est.random_state,
                            optimizer=LayoutOptimizer.for_min_dist(est.min_dist).for_refinement(),
                            refine_epochs=est.refine_epochs)
    if est.placement == "umap":
        est.placement = "refine"
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
