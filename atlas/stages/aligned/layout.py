"""The joint layout of an aligned atlas: one UMAP over the joint vectors of both sides, split
back into an ordinary ``layout.h5`` per side, so that one place on both maps means the same inputs.

Two ways (``mode``):

- ``"joint"`` (the default): every row is laid out once, as its two sides' own activations side
  by side, ``[a, b]`` (each space scaled to the same mean row length with ``balance``), and both
  sides' files get that one position. The same place on both maps is the same inputs by
  construction, and both layers shape the layout equally.
- ``"mapped"``: Lucid's ``aligned_umap``: the rows of both sides are stacked (side a's ``N`` rows,
  then side b's ``N``), each as its joint vector through the linear maps, side a's ``[a, a W_ab]``
  and side b's ``[b W_ba, b]`` (:meth:`~atlas.stages.aligned.fit.AlignedMaps.combine`), laid out
  together, then split. A row's two positions coincide only as far as the maps predict each
  side from the other: where they fit poorly (held-out R^2 0.24 / 0.29 between InceptionV1's
  mixed4a and mixed4e) the predicted half of each vector is shrunk toward the mean, the two
  sides' vectors form two clusters, and the two maps no longer show the same inputs at the same
  place (``benchmarks/bench_aligned.py`` measures it).

Either way the layout is normalised with one percentile box for both sides
(:func:`atlas.stages.reduce.layout_bounds`). The UMAP is the reduce stage's
(:class:`atlas.stages.reduce.AtlasUMAP`, :class:`atlas.stages.reduce.ReduceSettings`): fitted on a
seeded sample of ``sample_size`` stacked rows, every other row placed into the fit by its nearest
fitted rows and refined; duplicate, all-zero and non-finite rows are handled as there.

Each side's file is a ``layout.h5`` of its own activations and layer
(:mod:`atlas.store.layout`; ``row_ids`` = every row of the layer), recording as inputs those
activations and ``maps.h5``, so the grid stage bins it like any layout and knows when it is out
of date. Its ``/fit`` holds that side's part of the shared fit. The fitted model is pickled once
for both (``joint.umap.pkl``) before placement starts; placement is written chunk by chunk with
the layout's committed-rows counter, so a killed run resumes where it stopped and never refits.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.stages.aligned.fit import AlignedMaps, load_maps
from atlas.stages.aligned.pairs import RowsMismatchError, SideRows
from atlas.stages.reduce import AtlasUMAP, ReduceSettings, layout_bounds
from atlas.stages.reduce.stage import keep_fitted, layout_xy, load_fit_model, save_fit_model
from atlas.store.activations import ActivationsFile
from atlas.store.aligned import read_maps
from atlas.store.common import settings_hash
from atlas.store.layout import NONFINITE, PLACED, ZERO, LayoutWriter
from atlas.store.lineage import check_output

log = logging.getLogger(__name__)

#: The joint UMAP's pickle, beside ``maps.h5``.
MODEL_FILE = "joint.umap.pkl"
#: How the two sides are laid out (see the module docstring).
MODES = ("joint", "mapped")


@dataclass
class JointLayoutSummary:
    """What the joint layout did: rows per side, placed, fitted."""

    paths: dict[str, Path]
    rows: int = 0
    placed: dict[str, int] = field(default_factory=dict)
    fit_rows: int = 0
    fit_seconds: float = 0.0
    seconds: float = 0.0
    resumed_rows: int = 0
    up_to_date: bool = False

    def describe(self) -> str:
        where = " and ".join(str(p) for p in self.paths.values())
        if self.up_to_date:
            return f"{where} are complete and current; nothing to do"
        resumed = f"; {self.resumed_rows} rows were already done" if self.resumed_rows else ""
        placed = ", ".join(f"side {s} {n}" for s, n in self.placed.items())
        return (f"laid out {self.rows} rows a side together ({placed} placed); UMAP fit on {self.fit_rows} distinct "
                f"rows of both sides in {self.fit_seconds:.1f} s, {self.seconds:.1f} s in all{resumed}; wrote {where}")


def joint_layout(
    a: SideRows,
    b: SideRows,
    maps_path: str | os.PathLike,
    layout_a: str | os.PathLike,
    layout_b: str | os.PathLike,
    settings: ReduceSettings | None = None,
    *,
    balance: bool = True,
    mode: str = "joint",
    name: str = "",
    overwrite: bool = False,
    progress: bool = True,
) -> JointLayoutSummary:
    """Lay out the rows of sides ``a`` and ``b`` together (see the module docstring) into
    ``layout_a`` and ``layout_b``, with the maps of ``maps_path``.

    Skipped when both files are complete for the same settings and inputs; resumed when both are
    partial (or one finished) runs of them; made again, both, otherwise. A file of other settings
    raises :class:`~atlas.store.common.SettingsChangedError` unless ``overwrite``.
    """
    t0 = time.perf_counter()
    settings = settings or ReduceSettings()
    paths = {"a": Path(layout_a), "b": Path(layout_b)}
    sides = {"a": a, "b": b}
    pkl = Path(maps_path).with_name(MODEL_FILE)
    summary = JointLayoutSummary(paths)
    record = read_maps(maps_path)
    maps = load_maps(maps_path)
    if mode not in MODES:
        raise ValueError(f"layout mode must be one of {', '.join(MODES)}, not {mode!r}")
    common = dict(settings.hashed(), balance=bool(balance), maps_settings_hash=str(record.attrs["settings_hash"]))
    if mode != "mapped":  # files laid out before the modes existed were "mapped" and keep their hash
        common["mode"] = mode
    with ActivationsFile(a.activations) as fa, ActivationsFile(b.activations) as fb:
        files = {"a": fa, "b": fb}
        sources = {s: str(files[s].attrs.get("settings_hash", "")) for s in sides}
        full = {s: dict(common, side=s, layer=sides[s].layer, source_settings_hash=sources[s]) for s in sides}
        digest = settings_hash(dict(common, layers=[a.layer, b.layer], sources=[sources["a"], sources["b"]]))
        found = {s: check_output(paths[s], "layout", full[s], stage="align",
                                 inputs={"activations": sides[s].activations, "maps": maps_path},
                                 input_keys=("source_settings_hash", "maps_settings_hash"), overwrite=overwrite)
                 for s in sides}
        if all(f.state == "current" for f in found.values()):
            log.info("%s and %s are complete and current; skipping the joint layout", *paths.values())
            summary.up_to_date = True
            return summary
        for s, f in found.items():
            if f.state == "stale":
                log.warning("%s: %s; laying both sides out again", paths[s], "; ".join(f.reasons))
        n = fa.n_rows(a.layer)
        if fb.n_rows(b.layer) != n:
            raise RowsMismatchError(f"side a has {n} rows and side b {fb.n_rows(b.layer)}; they do not line up")
        summary.rows = n
        resume = all(f.state in ("partial", "current") for f in found.values())
        writers: dict[str, LayoutWriter] = {}
        try:
            for s in sides:
                if resume:
                    writers[s] = LayoutWriter.reopen(paths[s])
                else:
                    writers[s] = LayoutWriter.create(paths[s], np.arange(n, dtype=np.int64), full[s], {
                        "model": files[s].model, "layer": sides[s].layer, "source": str(sides[s].activations),
                        "source_settings_hash": sources[s], "class_index": -1, "class_name": "",
                        "model_file": os.path.relpath(pkl.absolute(), paths[s].absolute().parent),
                        "maps": os.path.relpath(Path(maps_path).absolute(), paths[s].absolute().parent),
                        "aligned": name, "aligned_side": s,
                    }, chunk_rows=settings.chunk_rows, inputs={"activations": sides[s].activations, "maps": maps_path})
            todo = [s for s in sides if not writers[s].complete]
            summary.resumed_rows = sum(writers[s].n_rows_done for s in sides) if resume else 0
            est = load_fit_model(pkl, digest) if resume and all(writers[s].has_fit for s in todo) else None
            if est is None:
                tf = time.perf_counter()
                est = _fit_joint(files, sides, maps, n, settings, balance, mode)
                summary.fit_seconds = time.perf_counter() - tf
                for s in todo:
                    writers[s].write_fit(*_side_fit(est, s, n, mode))
                save_fit_model(est, pkl, digest)
            summary.fit_rows = len(est.fit_indices_)
            with tqdm(total=2 * n, initial=sum(writers[s].n_rows_done for s in sides), unit="row",
                      desc=f"layout {a.layer} + {b.layer}", disable=not progress, leave=False) as bar:
                if mode == "joint":  # one placement a row, written to both sides
                    _place(est, [writers[s] for s in todo], _vectors(files, sides, "a", maps, balance, mode),
                           settings.chunk_rows, bar)
                else:
                    for s in todo:
                        _place(est, [writers[s]], _vectors(files, sides, s, maps, balance, mode), settings.chunk_rows,
                               bar)
            summary.placed = _finish(writers, todo)
        finally:
            for w in writers.values():
                w.close()
    summary.seconds = time.perf_counter() - t0
    log.info("%s", summary.describe())
    return summary


def _vectors(files: dict[str, ActivationsFile], sides: dict[str, SideRows], side: str, maps: AlignedMaps,
             balance: bool, mode: str):
    """``vectors(start, stop)``: the vectors side ``side``'s rows ``start .. stop`` are laid out by."""
    if mode == "joint":
        return lambda start, stop: joint_vectors(
            *(files[s].read(sides[s].layer, "activations", start, stop) for s in ("a", "b")), maps, balance)
    return lambda start, stop: maps.combine(files[side].read(sides[side].layer, "activations", start, stop), side,
                                            balance)


def joint_vectors(a: np.ndarray, b: np.ndarray, maps: AlignedMaps, balance: bool = True) -> np.ndarray:
    """``(n, Ca + Cb)`` float32: each row's own two activations side by side, ``[a, b]``, each
    space divided by its scale with ``balance`` (the ``"joint"`` layout's vectors)."""
    sa, sb = (maps.scale_a, maps.scale_b) if balance else (1.0, 1.0)
    return np.hstack([np.asarray(a, np.float32) / sa, np.asarray(b, np.float32) / sb]).astype(np.float32)


def _fit_joint(files: dict[str, ActivationsFile], sides: dict[str, SideRows], maps: AlignedMaps, n: int,
               settings: ReduceSettings, balance: bool, mode: str = "mapped") -> AtlasUMAP:
    """The UMAP of a seeded sample of the ``2 n`` stacked rows (side a's ``0 .. n-1``, side b's
    ``n .. 2n-1``); its ``fit_indices_`` and ``sample_indices_`` are stacked row numbers. In the
    ``"joint"`` mode: of the ``n`` rows' joint vectors, numbered as the rows."""
    rng = np.random.default_rng(settings.random_state)
    if mode == "joint":
        pick = np.arange(n) if n <= settings.sample_size else np.sort(
            rng.choice(n, settings.sample_size, replace=False))
        x = joint_vectors(*(files[s].read_rows(sides[s].layer, "activations", pick) for s in ("a", "b")), maps,
                          balance)
        est = settings.estimator()
        est.sample_size = len(x)
        est.fit(x)
        est.sample_size = settings.sample_size
        est.fit_indices_ = pick[est.fit_indices_]
        est.sample_indices_ = pick[est.sample_indices_]
        return est
    total = 2 * n
    pick = np.arange(total) if total <= settings.sample_size else np.sort(
        rng.choice(total, settings.sample_size, replace=False))
    ids = {"a": pick[pick < n], "b": pick[pick >= n] - n}
    x = np.vstack([maps.combine(files[s].read_rows(sides[s].layer, "activations", ids[s]), s, balance)
                   for s in ("a", "b")])
    est = settings.estimator()
    est.sample_size = len(x)  # the sample is drawn here; fit uses all of it
    est.fit(x)
    est.sample_size = settings.sample_size
    est.fit_indices_ = pick[est.fit_indices_]
    est.sample_indices_ = pick[est.sample_indices_]
    return est


def _side_fit(est: AtlasUMAP, side: str, n: int,
              mode: str = "mapped") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Side ``side``'s part of the joint fit, as :meth:`LayoutWriter.write_fit` takes it: its
    distinct fitted rows and their embedding, its sampled rows and theirs, its duplicates (in the
    ``"joint"`` mode, the whole fit, for both sides)."""
    if mode == "joint":
        return (est.fit_indices_, est.embedding_, est.sample_indices_, est.sample_embedding_,
                int(len(est.sample_indices_) - len(est.fit_indices_)))
    offset = 0 if side == "a" else n
    mine = (est.fit_indices_ >= offset) & (est.fit_indices_ < offset + n)
    sampled = (est.sample_indices_ >= offset) & (est.sample_indices_ < offset + n)
    return (est.fit_indices_[mine] - offset, est.embedding_[mine], est.sample_indices_[sampled] - offset,
            est.sample_embedding_[sampled], int(sampled.sum() - mine.sum()))


def _place(est: AtlasUMAP, writers: list[LayoutWriter], vectors: Any, chunk_rows: int, bar: Any) -> None:
    """Place the rows not done yet of the side(s) ``writers`` hold (several: sides that share every
    position, the ``"joint"`` layout), a chunk at a time, committing each; rows of the fit sample
    keep their fitted position (:func:`atlas.stages.reduce.stage.keep_fitted`, as the reduce stage)."""
    sample_ids, sample_emb = writers[0].read_sample()
    m = writers[0].n_rows
    for start in range(min(w.n_rows_done for w in writers), m, chunk_rows):
        stop = min(m, start + chunk_rows)
        xy, status = est.place(vectors(start, stop))
        keep_fitted(xy, status, np.arange(start, stop), sample_ids, sample_emb)
        for w in writers:
            if w.n_rows_done < stop:
                w.write_rows(start, xy, status)
                w.commit(stop)
                bar.update(stop - start)


def _finish(writers: dict[str, LayoutWriter], todo: list[str]) -> dict[str, int]:
    """Normalise both sides with one box (the percentiles of both sides' placed rows together) and
    finish the sides in ``todo``; returns the placed rows of each side."""
    raw = {s: w.read_raw() for s, w in writers.items()}
    placed = np.vstack([xy[status == PLACED] for xy, status in raw.values()])
    if not len(placed):
        raise ValueError("no row of either side could be placed (all non-finite or all-zero); check the activations")
    lo, hi = layout_bounds(placed)
    counts = {}
    for s, (xy_raw, status) in raw.items():
        counts[s] = int((status == PLACED).sum())
        if s not in todo:
            continue
        xy = layout_xy(xy_raw, status, lo, hi)
        zero = status == ZERO
        if zero.any():
            log.info("side %s: %d all-zero rows put at the side's centroid and left out of the grid", s, int(zero.sum()))
        bad = int((status == NONFINITE).sum())
        if bad:
            log.warning("side %s: %d rows have NaN/inf activations and were skipped", s, bad)
        writers[s].finish(xy, status, lo, hi)
    return counts


__all__ = ["MODEL_FILE", "MODES", "JointLayoutSummary", "joint_layout", "joint_vectors"]
