"""The maps between the two sides of an aligned atlas, fitted by least squares, and how well they
predict one side from the other on photos they were not fitted on.

Lucid's ``aligned_activation_atlas`` recipe (``push_activations``) maps one layer's activations
into another's with the least-squares ``W = (A^T A)^-1 A^T B``. Here, with ``A`` ``(n, Ca)`` and
``B`` ``(n, Cb)`` the training rows of the two sides (row ``i`` of one is row ``i`` of the other),
``mu_a``, ``mu_b`` their means and ``Ac = A - mu_a``, ``Bc = B - mu_b``::

    b ~ a W_ab + c_ab,   W_ab = (Ac^T Ac + l_ab I)^-1 Ac^T Bc   (Ca, Cb),   c_ab = mu_b - mu_a W_ab
    a ~ b W_ba + c_ba,   W_ba = (Bc^T Bc + l_ba I)^-1 Bc^T Ac   (Cb, Ca),   c_ba = mu_a - mu_b W_ba
    l = ridge * trace(Ac^T Ac) / Ca      (a ridge relative to the mean channel variance)

Two departures from the recipe, both measured on 2,400 rows of the real InceptionV1 at 300 sample
photos (held-out R^2): the intercept ``c`` (Lucid's maps have none), which takes trained
``inception4c`` -> the random network's from 0.05 to 0.29 and leaves ``inception4a`` ->
``inception4e`` as it was (0.17); and a ridge chosen per direction among candidates (default
:data:`~atlas.stages.aligned.settings.DEFAULT_RIDGES`) by the error on validation photos kept out
of the training photos (the same share as the held-out ones), then refitted on every training
row: the best ridge falls as rows per channel grow (1 there; at 1e-4 and without the intercept, R^2
was -0.13 and -0.65 for 4a <-> 4e, the maps fitting noise).

Everything is accumulated over chunks of rows (sums and the Gram matrices ``A^T A``, ``B^T B``,
``A^T B`` in float64, :class:`Moments`), so memory is one chunk and three Gram matrices whatever
the number of rows, and the validation error of every candidate ridge comes from the validation
photos' moments without a second pass. Whole photos are held out (by default 20% of them,
seeded), so that the positions of one photo, which look alike, do not sit on both sides of a
split; on their rows::

    R^2              = 1 - SSE / SST   over all channels (SST about the held-out rows' mean)
    mean per channel = mean over channels c of 1 - SSE_c / SST_c (channels constant on those rows left out)

The joint vectors the layout is fitted on (Lucid's BIDIRECTIONAL mode) are
:meth:`AlignedMaps.combine`: side a's row ``a`` -> ``[a, a W_ab + c_ab]``, side b's row ``b`` ->
``[b W_ba + c_ba, b]``, each activation space divided by its root mean square row length when balanced.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from atlas.stages.aligned.pairs import SideRows, check_rows_line_up, read_image_index
from atlas.stages.aligned.settings import DEFAULT_RIDGES
from atlas.store.activations import ActivationsFile
from atlas.store.aligned import KIND, read_maps, write_maps
from atlas.store.lineage import check_output, input_record

log = logging.getLogger(__name__)

CHUNK_ROWS = 16384
#: Rows of the fit, validation and held-out parts.
FIT, VALIDATION, HELD_OUT = 0, 1, 2


# ---- the least squares and the scores: pure functions over arrays


def solve_map(gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
    """``(Cin, Cout)`` float64 ``W = (G + l I)^-1 C``, ``l = ridge * trace(G) / Cin``, from the
    (centred) Gram matrix ``G`` ``(Cin, Cin)`` and ``C`` ``(Cin, Cout)``; the least-squares solution
    where ``G + l I`` is singular (``ridge = 0`` with dependent channels)."""
    gram = np.asarray(gram, np.float64)
    trace = float(np.trace(gram))
    lhs = gram + ridge * (trace / len(gram) if trace > 0 else 1.0) * np.eye(len(gram))
    try:
        w = np.linalg.solve(lhs, cross)
        if np.isfinite(w).all():
            return w
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(lhs, cross, rcond=None)[0]


@dataclass(frozen=True)
class LinearMap:
    """``y ~ x @ w + bias``: ``w`` ``(Cin, Cout)``, ``bias`` ``(Cout,)``, float32; ``ridge`` it was fitted with."""

    w: np.ndarray
    bias: np.ndarray
    ridge: float = 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float32) @ self.w + self.bias).astype(np.float32)


class Moments:
    """Sums over paired rows ``(a, b)`` that least squares needs: counts, sums and the Gram matrices
    ``A^T A``, ``B^T B``, ``A^T B`` (float64); :meth:`about` centres them about any means."""

    def __init__(self, ca: int, cb: int):
        self.n = 0
        self.sa, self.sb = np.zeros(ca), np.zeros(cb)
        self.aa, self.bb, self.ab = np.zeros((ca, ca)), np.zeros((cb, cb)), np.zeros((ca, cb))

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        self.n += len(a)
        self.sa += a.sum(axis=0, dtype=np.float64)
        self.sb += b.sum(axis=0, dtype=np.float64)
        self.aa += a.T @ a
        self.bb += b.T @ b
        self.ab += a.T @ b

    def __add__(self, other: Moments) -> Moments:
        out = Moments(len(self.sa), len(self.sb))
        for k in ("n", "sa", "sb", "aa", "bb", "ab"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        return out

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sa / max(self.n, 1), self.sb / max(self.n, 1)

    def about(self, ma: np.ndarray, mb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sum (a-ma)(a-ma)^T, sum (b-mb)(b-mb)^T, sum (a-ma)(b-mb)^T)`` over the rows."""
        n = self.n
        aa = self.aa - np.outer(self.sa, ma) - np.outer(ma, self.sa) + n * np.outer(ma, ma)
        bb = self.bb - np.outer(self.sb, mb) - np.outer(mb, self.sb) + n * np.outer(mb, mb)
        ab = self.ab - np.outer(self.sa, mb) - np.outer(ma, self.sb) + n * np.outer(ma, mb)
        return aa, bb, ab


def _direction(m: Moments, ma: np.ndarray, mb: np.ndarray, a_to_b: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(G_xx, G_yy, G_xy)`` of ``m`` about ``(ma, mb)`` for predicting b from a (or a from b)."""
    aa, bb, ab = m.about(ma, mb)
    return (aa, bb, ab) if a_to_b else (bb, aa, ab.T)


def fit_direction(train: Moments, a_to_b: bool, ridge: float) -> LinearMap:
    """The map predicting side b from side a (``a_to_b``) or a from b, fitted on ``train``."""
    ma, mb = train.means()
    gxx, _gyy, gxy = _direction(train, ma, mb, a_to_b)
    w = solve_map(gxx, gxy, ridge)
    mx, my = (ma, mb) if a_to_b else (mb, ma)
    return LinearMap(w.astype(np.float32), (my - mx @ w).astype(np.float32), float(ridge))


def validation_errors(fit: Moments, validation: Moments, a_to_b: bool, ridges: Sequence[float]) -> np.ndarray:
    """``(len(ridges),)`` the squared error on the ``validation`` rows of the map fitted on ``fit``
    with each ridge, from the moments alone: about the fit's means,
    ``SSE = tr G_yy - 2 tr(W^T G_xy) + tr(W^T G_xx W)`` of the validation rows."""
    ma, mb = fit.means()
    gxx, _gyy, gxy = _direction(fit, ma, mb, a_to_b)
    vxx, vyy, vxy = _direction(validation, ma, mb, a_to_b)
    out = []
    for ridge in ridges:
        w = solve_map(gxx, gxy, ridge)
        out.append(np.trace(vyy) - 2 * np.sum(w * vxy) + np.sum(w * (vxx @ w)))
    return np.asarray(out)


def choose_ridge(fit: Moments, validation: Moments, a_to_b: bool, candidates: Sequence[float]) -> float:
    """The candidate ridge whose map, fitted on ``fit``, has the least squared error on
    ``validation`` (:func:`validation_errors`); the one candidate when there is one, the largest
    when there are no validation rows."""
    if len(candidates) == 1 or validation.n == 0 or fit.n == 0:
        return float(max(candidates))
    return float(candidates[int(np.argmin(validation_errors(fit, validation, a_to_b, candidates)))])


def fit_linear_map(x: np.ndarray, y: np.ndarray, ridge: float = 0.0) -> LinearMap:
    """The map ``y ~ x @ w + bias`` of least squares (``ridge`` relative to the mean channel
    variance of ``x``) for ``x`` ``(n, Cin)``, ``y`` ``(n, Cout)``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x and y must be (n, Cin) and (n, Cout) with the same n, got {x.shape} and {y.shape}")
    m = Moments(x.shape[1], y.shape[1])
    m.add(x, y)
    return fit_direction(m, True, ridge)


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
    """The two maps and the spaces' scales (root mean square row length of the training rows)."""

    ab: LinearMap  # side a -> side b
    ba: LinearMap  # side b -> side a
    scale_a: float = 1.0
    scale_b: float = 1.0

    def combine(self, x: np.ndarray, side: str, balance: bool = True) -> np.ndarray:
        """``(n, Ca + Cb)`` float32 joint vectors of side ``side``'s rows ``x``: side a's
        ``[a, ab(a)]``, side b's ``[ba(b), b]``; with ``balance``, side a's space divided by
        ``scale_a`` and side b's by ``scale_b``. A non-finite row stays non-finite."""
        x = np.asarray(x, np.float32)
        sa, sb = (self.scale_a, self.scale_b) if balance else (1.0, 1.0)
        if side == "a":
            return np.hstack([x / sa, self.ab(x) / sb]).astype(np.float32)
        if side == "b":
            return np.hstack([self.ba(x) / sa, x / sb]).astype(np.float32)
        raise ValueError(f"side must be 'a' or 'b', not {side!r}")


def fit_maps(fit: Moments, validation: Moments, candidates: Sequence[float]) -> AlignedMaps:
    """Both maps: each direction's ridge chosen on ``validation`` (:func:`choose_ridge`), then
    refitted on the fit and validation rows together."""
    train = fit + validation
    if train.n == 0:
        raise ValueError("no rows to fit the maps on")
    maps = [fit_direction(train, way, choose_ridge(fit, validation, way, candidates)) for way in (True, False)]
    rms = [float(np.sqrt(np.trace(g) / train.n)) for g in (train.aa, train.bb)]
    return AlignedMaps(*maps, *(r if r > 0 else 1.0 for r in rms))


def heldout_images(image_index: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """The photos held out: a seeded ``fraction`` of the photos that have rows (at least one, and
    at least one left), sorted. Fewer than two photos is an error."""
    photos = np.unique(np.asarray(image_index))
    if len(photos) < 2:
        raise ValueError(f"the rows come from {len(photos)} photo(s); holding photos out of the fit needs at least 2")
    k = min(len(photos) - 1, max(1, int(round(fraction * len(photos)))))
    return np.sort(np.random.default_rng(seed).choice(photos, size=k, replace=False))


def split_rows(image_index: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(part (N,) uint8, held-out photos, validation photos)``: each row's part, :data:`FIT`,
    :data:`VALIDATION` or :data:`HELD_OUT`, by whole photos: ``fraction`` of the photos held out,
    then ``fraction`` of the rest kept for choosing the ridge (none when one photo is left)."""
    held = heldout_images(image_index, fraction, seed)
    part = np.where(np.isin(image_index, held), HELD_OUT, FIT).astype(np.uint8)
    rest = image_index[part == FIT]
    val = heldout_images(rest, fraction, seed + 1) if len(np.unique(rest)) >= 2 else np.zeros(0, np.int64)
    part[np.isin(image_index, val) & (part == FIT)] = VALIDATION
    return part, held, val


# ---- the fit step over files: RUN/aligned/<name>/maps.h5 and fit.json


@dataclass
class FitSummary:
    """What the fit step did (or found): held-out R^2 each way, the ridges chosen."""

    path: Path
    a_to_b: R2
    b_to_a: R2
    ridge: dict[str, float]
    rows: int = 0
    train_rows: int = 0
    seconds: float = 0.0
    up_to_date: bool = False

    def describe(self) -> str:
        scores = (f"held-out R^2 a->b {self.a_to_b.total:.3f} (per channel {self.a_to_b.mean_per_channel:.3f}), "
                  f"b->a {self.b_to_a.total:.3f} (per channel {self.b_to_a.mean_per_channel:.3f}) on "
                  f"{self.a_to_b.rows} rows; ridge a->b {self.ridge['a_to_b']:g}, b->a {self.ridge['b_to_a']:g}")
        if self.up_to_date:
            return f"{self.path} is complete and current ({scores}); nothing to do"
        return f"fitted the maps on {self.train_rows} of {self.rows} rows in {self.seconds:.1f} s: {scores}"


def fit_maps_file(a: SideRows, b: SideRows, maps_path: str | os.PathLike, *, holdout: float,
                  ridge: Sequence[float] = DEFAULT_RIDGES, seed: int = 0, fit_json: str | os.PathLike | None = None,
                  overwrite: bool = False, progress: bool = True, chunk_rows: int = CHUNK_ROWS) -> FitSummary:
    """The fit step: the maps between ``a``'s and ``b``'s rows into ``maps_path``
    (:mod:`atlas.store.aligned`), their held-out scores also into ``fit_json``. ``ridge``: the
    candidate ridges (one value: that ridge).

    Skipped when ``maps_path`` is complete for the same settings and inputs; made again when an
    input changed since; a file of other settings raises
    :class:`~atlas.store.common.SettingsChangedError` unless ``overwrite``. Rows that do not line
    up raise :class:`~atlas.stages.aligned.pairs.RowsMismatchError`.
    """
    t0 = time.perf_counter()
    maps_path = Path(maps_path)
    candidates = [float(r) for r in ridge]
    with ActivationsFile(a.activations) as fa, ActivationsFile(b.activations) as fb:
        hashes = {"source_a_settings_hash": str(fa.attrs.get("settings_hash", "")),
                  "source_b_settings_hash": str(fb.attrs.get("settings_hash", ""))}
        models = {"model_a": fa.model, "model_b": fb.model}
    hashed = {"layer_a": a.layer, "layer_b": b.layer, "holdout": float(holdout), "ridge": candidates,
              "seed": int(seed), **models, **hashes}
    inputs = {"activations_a": a.activations, "activations_b": b.activations}
    found = check_output(maps_path, KIND, hashed, stage="align", inputs=inputs, input_keys=tuple(hashes),
                         overwrite=overwrite)
    if found.state == "current":
        log.info("%s is complete and current; skipping the fit", maps_path)
        if fit_json is not None and not Path(fit_json).is_file():
            write_fit_json(fit_json, maps_path, a, b)
        return summary_of(maps_path, up_to_date=True)
    if found.state == "stale":
        log.warning("%s: %s; fitting again", maps_path, "; ".join(found.reasons))
    n = check_rows_line_up(a, b)
    image_index = read_image_index(a.activations, a.layer)
    part, held_images, val_images = split_rows(image_index, holdout, seed)
    with ActivationsFile(a.activations) as fa, ActivationsFile(b.activations) as fb:
        ca, cb = fa.spec(a.layer).channels, fb.spec(b.layer).channels
        moments = {FIT: Moments(ca, cb), VALIDATION: Moments(ca, cb)}
        bar = tqdm(total=2 * n, unit="row", desc=f"fit {a.layer} <-> {b.layer}", disable=not progress, leave=False)
        for start, xa, xb in _paired_chunks(fa, a.layer, fb, b.layer, n, chunk_rows):
            p = part[start:start + len(xa)]
            for which, m in moments.items():
                m.add(xa[p == which], xb[p == which])
            bar.update(len(xa))
        maps = fit_maps(moments[FIT], moments[VALIDATION], candidates)
        to_b, to_a = R2Accumulator(cb), R2Accumulator(ca)
        for start, xa, xb in _paired_chunks(fa, a.layer, fb, b.layer, n, chunk_rows):
            out = part[start:start + len(xa)] == HELD_OUT
            to_b.add(xb[out], maps.ab(xa[out]))
            to_a.add(xa[out], maps.ba(xb[out]))
            bar.update(len(xa))
        bar.close()
    r2 = {"a_to_b": asdict(to_b.result()), "b_to_a": asdict(to_a.result())}
    photos = len(np.unique(image_index))
    write_maps(maps_path, maps.ab.w, maps.ab.bias, maps.ba.w, maps.ba.bias, held_images, val_images, hashed, {
        "layer_a": a.layer, "layer_b": b.layer, "label_a": a.label, "label_b": b.label, **models,
        "scale_a": maps.scale_a, "scale_b": maps.scale_b, "ridge_ab": maps.ab.ridge, "ridge_ba": maps.ba.ridge,
        "n_rows": n, "n_train_rows": int((part != HELD_OUT).sum()), "n_validation_rows": int((part == VALIDATION).sum()),
        "n_heldout_rows": int((part == HELD_OUT).sum()), "n_train_images": photos - len(held_images),
        "n_validation_images": len(val_images), "n_heldout_images": len(held_images),
    }, r2=r2, inputs=inputs)
    if fit_json is not None:
        write_fit_json(fit_json, maps_path, a, b)
    summary = summary_of(maps_path)
    summary.seconds = time.perf_counter() - t0
    log.info("%s", summary.describe())
    return summary


def _paired_chunks(fa: ActivationsFile, la: str, fb: ActivationsFile, lb: str, n: int,
                   chunk_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        yield start, fa.read(la, "activations", start, stop).astype(np.float32), \
            fb.read(lb, "activations", start, stop).astype(np.float32)


def load_maps(path: str | os.PathLike) -> AlignedMaps:
    """The :class:`AlignedMaps` of a ``maps.h5``."""
    m = read_maps(path)
    return AlignedMaps(LinearMap(m.w_ab, m.bias_ab, float(m.attrs["ridge_ab"])),
                       LinearMap(m.w_ba, m.bias_ba, float(m.attrs["ridge_ba"])), m.scale_a, m.scale_b)


def summary_of(maps_path: str | os.PathLike, up_to_date: bool = False) -> FitSummary:
    """A :class:`FitSummary` of a finished ``maps.h5``."""
    m = read_maps(maps_path)
    r2 = m.r2
    return FitSummary(Path(maps_path), R2(**r2["a_to_b"]), R2(**r2["b_to_a"]),
                      {"a_to_b": float(m.attrs["ridge_ab"]), "b_to_a": float(m.attrs["ridge_ba"])},
                      rows=int(m.attrs["n_rows"]), train_rows=int(m.attrs["n_train_rows"]), up_to_date=up_to_date)


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not np.isfinite(v) else v


def write_fit_json(path: str | os.PathLike, maps_path: str | os.PathLike, a: SideRows, b: SideRows) -> dict[str, Any]:
    """Write ``fit.json``, the fit in words and numbers (from ``maps.h5``); returns what it wrote."""
    path = Path(path)
    m = read_maps(maps_path)
    at = m.attrs
    settings = json.loads(at["settings_json"])
    doc = {
        "name": path.parent.name,
        "a": {"layer": a.layer, "label": a.label, "model": at.get("model_a", ""),
              "activations": input_record(a.activations, path)["path"], "channels": int(m.w_ab.shape[0])},
        "b": {"layer": b.layer, "label": b.label, "model": at.get("model_b", ""),
              "activations": input_record(b.activations, path)["path"], "channels": int(m.w_ab.shape[1])},
        "rows": int(at["n_rows"]),
        "train": {"rows": int(at["n_train_rows"]), "images": int(at["n_train_images"])},
        "validation": {"rows": int(at["n_validation_rows"]), "images": int(at["n_validation_images"])},
        "held_out": {"rows": int(at["n_heldout_rows"]), "images": int(at["n_heldout_images"]),
                     "fraction": settings["holdout"]},
        "ridge": {"a_to_b": float(at["ridge_ab"]), "b_to_a": float(at["ridge_ba"]), "candidates": settings["ridge"]},
        "r2": {way: {k: _finite(v) for k, v in score.items()} for way, score in m.r2.items()},
        "scale": {"a": m.scale_a, "b": m.scale_b},
        "maps": os.path.relpath(Path(maps_path).absolute(), path.absolute().parent),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return doc


__all__ = ["FIT", "HELD_OUT", "R2", "VALIDATION", "AlignedMaps", "FitSummary", "LinearMap", "Moments", "R2Accumulator",
           "choose_ridge", "fit_direction", "fit_linear_map", "fit_maps", "fit_maps_file", "heldout_images",
           "load_maps", "r2_score", "solve_map", "split_rows", "summary_of", "validation_errors", "write_fit_json"]
