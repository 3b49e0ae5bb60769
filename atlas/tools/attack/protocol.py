"""The Activation Atlas article's protocol for patch attacks ("Focusing on a single
classification"), as an option of ``atlas attack`` (``--protocol article``).

- Ten patches per pair: the top ten candidate neighbourhoods, each rendered (and, separately, cut
  from a real photo: the dataset-example patch).
- Every patch is pasted on every held-out source photo at every size and corner.
- *Dynamic*: a (photo, patch) succeeds when the model's top-1 becomes the target at some corner
  and size. *Static*: one corner and size for every photo and patch of a family, the one that
  succeeds most often on the selection photos (which are not measured).
- Success is counted over every held-out photo x patch; p(target) before, and after (dynamic:
  the best placement's, static: the chosen placement's).
- Controls measured the same way: noise patches and patches rendered from random atlas cells.
- 95% intervals from a two-way bootstrap over photos and patches (both are samples: a rate over
  10 patches is not one over 10 x N independent trials).
- Universal mode: each patch at its family's static placement on photos of other classes; the
  rate at which they flip to the target, per patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: bootstrap replicates behind the intervals
N_BOOT = 2000


@dataclass
class ProtocolCounts:
    """One family's patches on the source photos: ``hit`` and ``prob`` (target probability),
    ``(patches, sizes, corners, photos)``; ``prob_before`` ``(photos,)``."""

    hit: np.ndarray
    prob: np.ndarray
    prob_before: np.ndarray
    sizes: tuple[float, ...]
    corners: tuple[str, ...]


@dataclass
class ProtocolResult:
    """A family's figures under the article's protocol (rates in [0, 1])."""

    family: str
    members: list[str]
    n_photos: int
    dynamic: float
    dynamic_ci: list[float]
    static: float
    static_ci: list[float]
    static_size: float
    static_corner: str
    prob_before: float
    prob_dynamic: float
    prob_static: float
    per_patch_dynamic: list[float]
    per_patch_static: list[float]
    labels: list[str] = field(default_factory=list)
    universal_per_patch: list[float] | None = None
    universal_images: int = 0


def static_placement(hit: np.ndarray, prob: np.ndarray, sel: np.ndarray) -> tuple[int, int]:
    """The (size, corner) index with the most successes over the selection photos ``sel`` and
    every patch (ties: the higher mean target probability)."""
    if len(sel) == 0:
        raise ValueError("no selection photos to choose the static placement on")
    rate = hit[..., sel].mean((0, 3))
    p = prob[..., sel].mean((0, 3))
    score = rate + 1e-6 * p
    s, k = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(s), int(k)


def two_way_bootstrap(x: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> list[float]:
    """95% percentile interval of the mean of ``x`` ``(patches, photos)`` when both the patches
    and the photos are resampled with replacement."""
    p, n = x.shape
    if p == 0 or n == 0:
        return [0.0, 1.0]
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    xf = x.astype(np.float64)
    for b in range(n_boot):
        rows = rng.integers(0, p, p)
        cols = rng.integers(0, n, n)
        means[b] = xf[np.ix_(rows, cols)].mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return [float(lo), float(hi)]


def protocol_result(family: str, members: Sequence[str], counts: ProtocolCounts, sel: np.ndarray,
                    test: np.ndarray, *, labels: Sequence[str] = (), seed: int = 0) -> ProtocolResult:
    """Count one family under the protocol: static placement chosen on ``sel``, every figure
    measured on ``test``."""
    hit, prob = counts.hit, counts.prob
    if hit.ndim != 4 or hit.shape != prob.shape:
        raise ValueError(f"hit and prob are (patches, sizes, corners, photos), got {hit.shape} and {prob.shape}")
    s, k = static_placement(hit, prob, sel)
    dyn = hit[..., test].any((1, 2))  # (patches, photos)
    sta = hit[:, s, k][:, test]
    return ProtocolResult(
        family, list(members), int(len(test)),
        float(dyn.mean()), two_way_bootstrap(dyn, seed=seed),
        float(sta.mean()), two_way_bootstrap(sta, seed=seed + 1),
        float(counts.sizes[s]), counts.corners[k],
        float(counts.prob_before[test].mean()),
        float(prob[..., test].max((1, 2)).mean()), float(prob[:, s, k][:, test].mean()),
        dyn.mean(1).tolist(), sta.mean(1).tolist(), list(labels))


def protocol_table(source: str, target: str, results: dict[str, ProtocolResult]) -> str:
    """Markdown: one row per family, the article's columns."""
    rows = [f"**{source} -> {target}** (article's protocol: every held-out photo x patch; [95% interval, "
            "bootstrap over photos and patches])", "",
            "| patches | photos x patches | dynamic | static (size, corner) | p(target) before -> dynamic / static |",
            "|---|---|---|---|---|"]
    for fam, r in results.items():
        rows.append(
            f"| {fam.replace('_', ' ')} ({len(r.members)}) | {r.n_photos} x {len(r.members)} | "
            f"{100 * r.dynamic:.1f}% [{100 * r.dynamic_ci[0]:.1f}-{100 * r.dynamic_ci[1]:.1f}] | "
            f"{100 * r.static:.1f}% [{100 * r.static_ci[0]:.1f}-{100 * r.static_ci[1]:.1f}] "
            f"({int(round(100 * r.static_size))}%, {r.static_corner}) | "
            f"{100 * r.prob_before:.1f} -> {100 * r.prob_dynamic:.1f} / {100 * r.prob_static:.1f}% |")
    if any(r.universal_per_patch for r in results.values()):
        rows += ["", "Universal (each patch at its family's static placement on photos of other classes; "
                     "flip-to-target rate per patch, %):", ""]
        for fam, r in results.items():
            if r.universal_per_patch:
                rows.append(f"- {fam.replace('_', ' ')} ({r.universal_images} photos): "
                            + ", ".join(f"{100 * v:.1f}" for v in r.universal_per_patch))
    return "\n".join(rows)
