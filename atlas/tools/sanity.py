"""Model-randomisation sanity check of attribution maps (Adebayo, Gilmer, Muelly, Goodfellow, Hardt,
Kim 2018, "Sanity Checks for Saliency Maps", sec. 3, cascading randomisation).

A map that explains the model must change when the model's learned weights are destroyed. The
check re-initialises the trained network's layers from the top (the classifier first, then the
last block, then the one before, ...) and compares each method's map on the randomised model
with its map on the trained one, photo by photo, by the Spearman rank correlation of the
absolute maps (the paper's "rank correlation (ABS)"; ties get their average rank, and a map
that is constant on either side shares no ranking with the other, so it counts as 0).

A method *passes* at a depth when the mean correlation there is below ``threshold`` (0.5 by
default): once the top layers are random, less than half of the map's ranking survives.
The paper's headline failure is guided backpropagation, whose map barely changes (it
reconstructs the image more than it explains the class).

:func:`top_down_layers` lists a model's parametrised top-level modules from the output back;
:func:`randomized_copy` re-initialises some of them in a copy (the model itself is untouched);
:func:`cascading_randomization` runs the check and returns a :class:`RandomizationResult`
whose ``table()`` is what ``benchmarks/bench_sanity.py`` prints.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from atlas.models import AtlasModel, finishing_order

__all__ = ["RandomizationResult", "cascading_randomization", "randomized_copy", "rank_correlation", "top_down_layers"]


def top_down_layers(model: AtlasModel) -> list[str]:
    """The top-level modules of ``model.net`` that hold parameters, in the reverse of the order
    in which they finish a forward pass: the classifier first (``fc``, ``inception5b``,
    ``inception5a``, ... for InceptionV1)."""
    finished = finishing_order(
        model, [(name, m) for name, m in model.net.named_children() if any(True for _ in m.parameters())])
    seen: list[str] = []
    for name in reversed(finished):
        if name not in seen:
            seen.append(name)
    return seen


def randomized_copy(model: AtlasModel, layers: Sequence[str], seed: int = 0) -> AtlasModel:
    """A copy of ``model`` whose ``layers`` (and everything inside them) are re-initialised with
    PyTorch's default initialisation (``reset_parameters``) under seed ``seed``; ``model`` is
    not changed. Raises ``ValueError`` for a layer with nothing to re-initialise."""
    out = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layers:
            resettable = [m for m in out.layer(name).modules() if hasattr(m, "reset_parameters")]
            if not resettable:
                raise ValueError(f"layer {name!r} has no parameters to re-initialise")
            for m in resettable:
                m.reset_parameters()
    return out.eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape (average ranks for ties; 0 when
    either map is constant, since it has no ranking to share)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class RandomizationResult:
    """``depths``: the names of the layers randomised at each step (cumulative, from the top);
    ``correlation[method]``: (depths, photos) Spearman rank correlations of |map| between the
    randomised and the trained model; ``threshold``: below it a method passes."""

    depths: list[list[str]]
    correlation: dict[str, np.ndarray]
    photos: int
    threshold: float = 0.5
    settings: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def mean(self, method: str) -> np.ndarray:
        """Mean correlation per depth."""
        return self.correlation[method].mean(1)

    def passes(self, method: str, depth: int = -1) -> bool:
        """Whether ``method``'s map changed (mean correlation below the threshold) at ``depth``
        (index into ``depths``; the deepest by default)."""
        return bool(self.mean(method)[depth] < self.threshold)

    def table(self) -> str:
        heads = [f"+{d[-1]}" if i else d[-1] for i, d in enumerate(self.depths)]
        rows = ["| method | " + " | ".join(f"{h} random" for h in heads) + " | passes |",
                "|---|" + "---|" * len(heads) + "---|"]
        for m in self.correlation:
            means = self.mean(m)
            first = next((i for i, v in enumerate(means) if v < self.threshold), None)
            verdict = "no" if first is None else f"yes (from {heads[first]})"
            rows.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in means) + f" | {verdict} |")
        return "\n".join(rows)


def cascading_randomization(model: AtlasModel, photos: Sequence[str | os.PathLike], *, methods: Sequence[str],
                            depth: int = 4, threshold: float = 0.5, seed: int = 0, progress: bool = True,
                            **method_settings) -> RandomizationResult:
    """Cascading randomisation (Adebayo et al. 2018): for ``depth`` steps, re-initialise one more
    layer of :func:`top_down_layers` (the classifier first) and compare each method's map of
    every photo with the trained model's, for the trained model's top-1 class.

    ``methods``: names of :data:`atlas.tools.attribution.METHODS`; ``method_settings``: fields of
    :class:`atlas.tools.explain.MethodSettings` (e.g. ``ig_steps=8``). Grad-CAM's default layer is the
    trained model's last spatial layer on every side.
    """
    import time

    from tqdm.auto import tqdm

    from atlas.tools import attribution as attr
    from atlas.tools.explain import MethodSettings, load_photo, method_map

    attr.check_methods(methods)
    order = top_down_layers(model)
    if not 1 <= depth <= len(order):
        raise ValueError(f"depth must be between 1 and {len(order)} (the model's parametrised layers), not {depth}")
    if {"grad_cam", "grad_cam_pp"} & set(methods) and "gradcam_layer" not in method_settings:
        method_settings["gradcam_layer"] = attr.last_spatial_layer(model)
    settings = MethodSettings(**method_settings)
    depths = [order[: k + 1] for k in range(depth)]
    models = [model] + [randomized_copy(model, d, seed=seed) for d in depths]
    corr = {m: np.zeros((depth, len(photos))) for m in methods}
    secs = {m: 0.0 for m in methods}
    for j, p in enumerate(tqdm(photos, desc="randomisation", unit="photo", disable=not progress)):
        x = load_photo(p, model)
        with torch.no_grad():
            t = int(model(x).argmax(1))
        for m in methods:
            maps = []
            for k, net in enumerate(models):
                gen = torch.Generator().manual_seed(seed + j)  # the same noise on every side (I-GOS, SmoothGrad)
                t0 = time.perf_counter()
                amap, _ = method_map(net, x, t, m, settings, gen)
                secs[m] += time.perf_counter() - t0
                maps.append(amap[0].abs().cpu().numpy())
            for k in range(depth):
                corr[m][k, j] = rank_correlation(maps[0], maps[k + 1])
    return RandomizationResult(depths, corr, len(photos), threshold, settings.describe(methods),
                               {m: s / max(1, len(photos)) for m, s in secs.items()})

