"""The linear maps between the two sides of an aligned atlas, fitted by least squares, and how
well they predict one side from the other on photos they were not fitted on.

Lucid's ``aligned_activation_atlas`` recipe (``push_activations``) maps one layer's activations
into another's with the least-squares solution ``W = (A^T A)^-1 A^T B`` (no intercept, the
activations as they are). Here, with ``A`` ``(n, Ca)`` and ``B`` ``(n, Cb)`` the training rows of
the two sides (row ``i`` of one is row ``i`` of the other)::

    W_ab = (A^T A + l_a I)^-1 A^T B      (Ca, Cb): b ~ a @ W_ab
    W_ba = (B^T B + l_b I)^-1 B^T A      (Cb, Ca): a ~ b @ W_ba
    l_a  = ridge * trace(A^T A) / Ca     (a ridge relative to the Gram matrix's mean diagonal)

accumulated over chunks of rows (``A^T A``, ``B^T B``, ``A^T B`` in float64), so memory is one
chunk and three Gram matrices whatever the number of rows. Whole photos are held out (by
default 20% of them, seeded), so that the positions of one photo, which look alike, do not sit
on both sides of the split; on their rows::

    R^2            = 1 - SSE / SST   over all channels (SST about the held-out rows' mean)
    mean per channel = mean over channels c of 1 - SSE_c / SST_c (channels constant on those rows left out)

The joint vectors the layout is fitted on (Lucid's BIDIRECTIONAL mode) are
:meth:`AlignedMaps.combine`: side a's row ``a`` -> ``[a, a W_ab]``, side b's row ``b`` ->
``[b W_ba, b]``, each activation space divided by its root mean square row length when balanced.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.stages.aligned.pairs import SideRows, check_rows_line_up, read_image_index
from atlas.stages.aligned.settings import DEFAULT_RIDGE
from atlas.store.activations import ActivationsFile
from atlas.store.aligned import KIND, read_maps, write_maps
from atlas.store.lineage import check_output, input_record

log = logging.getLogger(__name__)

CHUNK_ROWS = 16384


# ---- the least squares and the scores: pure functions over arrays


def solve_map(gram: np.ndarray, cross: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """``(Cin, Cout)`` float32 ``W = (G + l I)^-1 C``, ``l = ridge * trace(G) / Cin``, from the Gram
    matrix ``G = X^T X`` ``(Cin, Cin)`` and ``C = X^T Y`` ``(Cin, Cout)``; the least-squares
    solution (minimum norm) where ``G + l I`` is singular (``ridge = 0`` with dependent channels)."""
    gram = np.asarray(gram, np.float64)
    lam = ridge * (np.trace(gram) / len(gram) if np.trace(gram) > 0 else 1.0)
    lhs = gram + lam * np.eye(len(gram))
    try:
        w = np.linalg.solve(lhs, cross)
    except np.linalg.LinAlgError:
        w = np.linalg.lstsq(lhs, cross, rcond=None)[0]
    if not np.isfinite(w).all():
        w = np.linalg.lstsq(lhs, cross, rcond=None)[0]
    return w.astype(np.float32)


def fit_linear_map(x: np.ndarray, y: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """``(Cin, Cout)`` float32 ``W`` minimising ``|x W - y|^2 + l |W|^2`` for ``x`` ``(n, Cin)``,
    ``y`` ``(n, Cout)`` (see :func:`solve_map` for ``l``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x and y must be (n, Cin) and (n, Cout) with the same n, got {x.shape} and {y.shape}")
    return solve_map(x.T @ x, x.T @ y, ridge)


@dataclass(frozen=True)
class R2:
    """How well one side predicts the other on held-out rows.

    Attributes:
        total: ``1 - SSE / SST`` summed over all channels (1: exact; 0: no better than the mean).
        mean_per_channel: the mean of each channel's own ``1 - SSE_c / SST_c``.
        channels: the channels scored (those not constant on the held-out rows).
        rows: the held-out rows.
    """

    total: float
    mean_per_channel: float
    channels: int
    rows: int


class R2Accumulator:
    """Sums over chunks of ``(y, y_hat)`` (``(n, C)`` each) for :class:`R2`."""

    def __init__(self, channels: int):
        self.sse = np.zeros(channels)
        self.sum = np.zeros(channels)
        self.sumsq = np.zeros(channels)
        self.n = 0

    def add(self, y: np.ndarray, y_hat: np.ndarray) -> None:
        y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
        self.sse += ((y - y_hat) ** 2).sum(axis=0)
        self.sum += y.sum(axis=0)
        self.sumsq += (y ** 2).sum(axis=0)
        self.n += len(y)

    def result(self) -> R2:
        if self.n < 2:
            return R2(float("nan"), float("nan"), 0, self.n)
        sst = np.maximum(self.sumsq - self.sum ** 2 / self.n, 0.0)
        varies = sst > 1e-9 * max(float(sst.max()), 1e-30)
        total = 1.0 - self.sse.sum() / sst.sum() if sst.sum() > 0 else float("nan")
        per = 1.0 - self.sse[varies] / sst[varies]
        return R2(float(total), float(per.mean()) if len(per) else float("nan"), int(varies.sum()), self.n)


def r2_score(y: np.ndarray, y_hat: np.ndarray) -> R2:
    """:class:`R2` of the prediction ``y_hat`` of ``y`` (both ``(n, C)``)."""
    acc = R2Accumulator(np.asarray(y).shape[1])
    acc.add(y, y_hat)
    return acc.result()


@dataclass(frozen=True)
class AlignedMaps:
    """The two linear maps and the spaces' scales (root mean square row length of the fitted rows)."""

    w_ab: np.ndarray  # (Ca, Cb)
    w_ba: np.ndarray  # (Cb, Ca)
    scale_a: float = 1.0
    scale_b: float = 1.0

    def combine(self, x: np.ndarray, side: str, balance: bool = True) -> np.ndarray:
        """``(n, Ca + Cb)`` float32 joint vectors of side ``side``'s rows ``x``: side a's
        ``[a, a W_ab]``, side b's ``[b W_ba, b]``; with ``balance``, side a's space divided by
        ``scale_a`` and side b's by ``scale_b``. A non-finite row stays non-finite, a zero row zero."""
        x = np.asarray(x, np.float32)
        sa, sb = (self.scale_a, self.scale_b) if balance else (1.0, 1.0)
        if side == "a":
            return np.hstack([x / sa, (x @ self.w_ab) / sb]).astype(np.float32)
        if side == "b":
            return np.hstack([(x @ self.w_ba) / sa, x / sb]).astype(np.float32)
        raise ValueError(f"side must be 'a' or 'b', not {side!r}")


class MapFitter:
    """Accumulates ``A^T A``, ``B^T B`` and ``A^T B`` over chunks of paired rows; :meth:`maps` solves."""

    def __init__(self, ca: int, cb: int):
        self.aa, self.bb, self.ab = np.zeros((ca, ca)), np.zeros((cb, cb)), np.zeros((ca, cb))
        self.n = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        self.aa += a.T @ a
        self.bb += b.T @ b
        self.ab += a.T @ b
        self.n += len(a)

    def maps(self, ridge: float = DEFAULT_RIDGE) -> AlignedMaps:
        if self.n == 0:
            raise ValueError("no rows to fit the maps on")
        rms = [float(np.sqrt(np.trace(g) / self.n)) for g in (self.aa, self.bb)]
        return AlignedMaps(solve_map(self.aa, self.ab, ridge), solve_map(self.bb, self.ab.T, ridge),
                           *(r if r > 0 else 1.0 for r in rms))


def heldout_images(image_index: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """The photos held out of the fit: a seeded ``fraction`` of the photos that have rows (at
    least one, and at least one left to fit on), sorted. Fewer than two photos is an error."""
    photos = np.unique(np.asarray(image_index))
    if len(photos) < 2:
        raise ValueError(f"the rows come from {len(photos)} photo(s); holding photos out of the fit needs at least 2")
    k = min(len(photos) - 1, max(1, int(round(fraction * len(photos)))))
    return np.sort(np.random.default_rng(seed).choice(photos, size=k, replace=False))


# ---- the fit step over files: RUN/aligned/<name>/maps.h5 and fit.json


@dataclass
class FitSummary:
    """What the fit step did (or found): held-out R^2 each way."""

    path: Path
    a_to_b: R2
    b_to_a: R2
    rows: int = 0
    train_rows: int = 0
    seconds: float = 0.0
    up_to_date: bool = False

    def describe(self) -> str:
        scores = (f"held-out R^2 a->b {self.a_to_b.total:.3f} (per channel {self.a_to_b.mean_per_channel:.3f}), "
                  f"b->a {self.b_to_a.total:.3f} (per channel {self.b_to_a.mean_per_channel:.3f}) on "
                  f"{self.a_to_b.rows} rows")
        if self.up_to_date:
            return f"{self.path} is complete and current ({scores}); nothing to do"
        return f"fitted the maps on {self.train_rows} of {self.rows} rows in {self.seconds:.1f} s: {scores}"


def fit_maps_file(a: SideRows, b: SideRows, maps_path: str | os.PathLike, *, holdout: float, ridge: float = DEFAULT_RIDGE,
                  seed: int = 0, fit_json: str | os.PathLike | None = None, overwrite: bool = False,
                  progress: bool = True, chunk_rows: int = CHUNK_ROWS) -> FitSummary:
    """The fit step: the maps between ``a``'s and ``b``'s rows into ``maps_path``
    (:mod:`atlas.store.aligned`), their held-out scores also into ``fit_json``.

    Skipped when ``maps_path`` is complete for the same settings and inputs; made again when an
    input changed since; a file of other settings raises
    :class:`~atlas.store.common.SettingsChangedError` unless ``overwrite``. Rows that do not line
    up raise :class:`~atlas.stages.aligned.pairs.RowsMismatchError`.
    """
    t0 = time.perf_counter()
    maps_path = Path(maps_path)
    with ActivationsFile(a.activations) as fa, ActivationsFile(b.activations) as fb:
        hashes = {"source_a_settings_hash": str(fa.attrs.get("settings_hash", "")),
                  "source_b_settings_hash": str(fb.attrs.get("settings_hash", ""))}
        models = {"model_a": fa.model, "model_b": fb.model}
    hashed = {"layer_a": a.layer, "layer_b": b.layer, "holdout": float(holdout), "ridge": float(ridge),
              "seed": int(seed), **models, **hashes}
    inputs = {"activations_a": a.activations, "activations_b": b.activations}
    found = check_output(maps_path, KIND, hashed, stage="align", inputs=inputs, input_keys=tuple(hashes),
                         overwrite=overwrite)
    if found.state == "current":
        log.info("%s is complete and current; skipping the fit", maps_path)
        summary = summary_of(maps_path, up_to_date=True)
        if fit_json is not None and not Path(fit_json).is_file():
            write_fit_json(fit_json, maps_path, a, b)
        return summary
    if found.state == "stale":
        log.warning("%s: %s; fitting again", maps_path, "; ".join(found.reasons))
    n = check_rows_line_up(a, b)
    image_index = read_image_index(a.activations, a.layer)
    held_images = heldout_images(image_index, holdout, seed)
    held = np.isin(image_index, held_images)
    with ActivationsFile(a.activations) as fa, ActivationsFile(b.activations) as fb:
        ca, cb = fa.spec(a.layer).channels, fb.spec(b.layer).channels
        fitter = MapFitter(ca, cb)
        bar = tqdm(total=2 * n, unit="row", desc=f"fit {a.layer} <-> {b.layer}", disable=not progress, leave=False)
        for start, xa, xb in _paired_chunks(fa, a.layer, fb, b.layer, n, chunk_rows):
            keep = ~held[start:start + len(xa)]
            fitter.add(xa[keep], xb[keep])
            bar.update(len(xa))
        maps = fitter.maps(ridge)
        to_b, to_a = R2Accumulator(cb), R2Accumulator(ca)
        for start, xa, xb in _paired_chunks(fa, a.layer, fb, b.layer, n, chunk_rows):
            out = held[start:start + len(xa)]
            to_b.add(xb[out], xa[out] @ maps.w_ab)
            to_a.add(xa[out], xb[out] @ maps.w_ba)
            bar.update(len(xa))
        bar.close()
    r2 = {"a_to_b": asdict(to_b.result()), "b_to_a": asdict(to_a.result())}
    train_images = len(np.unique(image_index)) - len(held_images)
    write_maps(maps_path, maps.w_ab, maps.w_ba, held_images, hashed, {
        "layer_a": a.layer, "layer_b": b.layer, "label_a": a.label, "label_b": b.label, **models,
        "scale_a": maps.scale_a, "scale_b": maps.scale_b, "n_rows": n, "n_train_rows": int((~held).sum()),
        "n_heldout_rows": int(held.sum()), "n_train_images": train_images, "n_heldout_images": len(held_images),
    }, r2=r2, inputs=inputs)
    if fit_json is not None:
        write_fit_json(fit_json, maps_path, a, b)
    summary = summary_of(maps_path)
    summary.seconds = time.perf_counter() - t0
    log.info("%s", summary.describe())
    return summary


def _paired_chunks(fa: ActivationsFile, la: str, fb: ActivationsFile, lb: str, n: int, chunk_rows: int):
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        yield start, fa.read(la, "activations", start, stop).astype(np.float32), \
            fb.read(lb, "activations", start, stop).astype(np.float32)


def load_maps(path: str | os.PathLike) -> AlignedMaps:
    """The :class:`AlignedMaps` of a ``maps.h5``."""
    m = read_maps(path)
    return AlignedMaps(m.w_ab, m.w_ba, m.scale_a, m.scale_b)


def summary_of(maps_path: str | os.PathLike, up_to_date: bool = False) -> FitSummary:
    """A :class:`FitSummary` of a finished ``maps.h5``."""
    m = read_maps(maps_path)
    r2 = m.r2
    return FitSummary(Path(maps_path), R2(**r2["a_to_b"]), R2(**r2["b_to_a"]), rows=int(m.attrs["n_rows"]),
                      train_rows=int(m.attrs["n_train_rows"]), up_to_date=up_to_date)


def write_fit_json(path: str | os.PathLike, maps_path: str | os.PathLike, a: SideRows, b: SideRows) -> dict[str, Any]:
    """Write ``fit.json``, the fit in words and numbers (from ``maps.h5``); returns what it wrote."""
    path = Path(path)
    m = read_maps(maps_path)
    at = m.attrs
    doc = {
        "name": path.parent.name,
        "a": {"layer": a.layer, "label": a.label, "model": at.get("model_a", ""),
              "activations": input_record(a.activations, path)["path"], "channels": int(m.w_ab.shape[0])},
        "b": {"layer": b.layer, "label": b.label, "model": at.get("model_b", ""),
              "activations": input_record(b.activations, path)["path"], "channels": int(m.w_ab.shape[1])},
        "rows": int(at["n_rows"]),
        "train": {"rows": int(at["n_train_rows"]), "images": int(at["n_train_images"])},
        "held_out": {"rows": int(at["n_heldout_rows"]), "images": int(at["n_heldout_images"]),
                     "fraction": json.loads(at["settings_json"])["holdout"]},
        "ridge": json.loads(at["settings_json"])["ridge"],
        "r2": {way: {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in score.items()}
               for way, score in m.r2.items()},
        "scale": {"a": m.scale_a, "b": m.scale_b},
        "maps": os.path.relpath(Path(maps_path).absolute(), path.absolute().parent),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return doc


__all__ = ["R2", "AlignedMaps", "FitSummary", "MapFitter", "R2Accumulator", "fit_linear_map", "fit_maps_file",
           "heldout_images", "load_maps", "r2_score", "solve_map", "summary_of", "write_fit_json"]
