"""Normalisation of a raw layout into the unit square, as in the paper's notebooks."""

from __future__ import annotations

import numpy as np


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
