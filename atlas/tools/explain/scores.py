"""The methods scored over many photos by deletion / insertion AUC against a random map
(:func:`evaluate_methods`, :class:`MethodScores`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.tools import attribution as attr
from atlas.tools.explain.maps import DEFAULT_METHODS, MethodSettings, _gradcam_layer, load_photo, method_map


@dataclass
class MethodScores:
    """Per method: mean deletion AUC (lower is better), mean insertion AUC (higher is better),
    mean seconds per photo (the map only, not its curves), the number of photos, and the AUCs of
    every photo (``per_photo_deletion`` / ``per_photo_insertion``: method -> list, photo order)
    for paired comparisons."""

    deletion_auc: dict[str, float]
    insertion_auc: dict[str, float]
    seconds: dict[str, float]
    photos: int
    ig_completeness_error: float | None = None
    per_photo_deletion: dict[str, list[float]] = field(default_factory=dict)
    per_photo_insertion: dict[str, list[float]] = field(default_factory=dict)
    gradcam_layer: str | None = None

    def table(self) -> str:
        rows = ["| method | deletion AUC (lower is better) | insertion AUC (higher is better) | s / photo |",
                "|---|---|---|---|"]
        for m in self.deletion_auc:
            rows.append(f"| {m} | {self.deletion_auc[m]:.3f} | {self.insertion_auc[m]:.3f} | {self.seconds[m]:.2f} |")
        return "\n".join(rows)

    def against_random(self) -> str:
        """One line a method: its AUCs minus the random map's, photo by photo (mean and 95% interval)."""
        lines = []
        for m in self.per_photo_deletion:
            if m == "random" or "random" not in self.per_photo_deletion:
                continue
            cells = []
            for curve in ("deletion", "insertion"):
                d, lo, hi, lower = self.paired(m, "random", curve)
                cells.append(f"{curve} {d:+.3f} ({lo:+.3f} .. {hi:+.3f}), lower on {100 * lower:.0f}% of photos")
            lines.append(f"{m} - random: " + "; ".join(cells))
        return "\n".join(lines)

    def paired(self, a: str, b: str, curve: str = "deletion") -> tuple[float, float, float, float]:
        """Photo by photo ``AUC(a) - AUC(b)`` on ``curve`` ("deletion" or "insertion"): the mean,
        its 95% interval (normal approximation, 1.96 standard errors) and the fraction of photos
        where ``a`` has the lower AUC."""
        per = {"deletion": self.per_photo_deletion, "insertion": self.per_photo_insertion}.get(curve)
        if per is None:
            raise ValueError(f"curve must be 'deletion' or 'insertion', not {curve!r}")
        missing = [m for m in (a, b) if m not in per]
        if missing:
            raise ValueError(f"no per-photo scores of {missing}; evaluated: {', '.join(per)}")
        d = np.asarray(per[a]) - np.asarray(per[b])
        half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        return float(d.mean()), float(d.mean() - half), float(d.mean() + half), float((d < 0).mean())


def evaluate_methods(model: AtlasModel, photos: Sequence[str | os.PathLike], *,
                     methods: Sequence[str] = DEFAULT_METHODS, layer: str | None = None,
                     steps: int = 16, ig_steps: int = 32, occlusion_patch: int = 32, occlusion_stride: int = 16,
                     igos_iterations: int = 10, igos_steps: int = 10, progress: bool = True) -> MethodScores:
    """Deletion / insertion AUC (``steps`` steps, :func:`atlas.tools.attribution.deletion_insertion`)
    of each method over ``photos`` for the model's top-1 class, with a random map as the floor
    to beat. ``layer``: Grad-CAM's and Grad-CAM++'s (default: the model's last spatial layer,
    as in :func:`explain_photo`); the other settings as in :func:`explain_photo`."""
    from tqdm.auto import tqdm

    attr.check_methods(methods)
    settings = MethodSettings(gradcam_layer=_gradcam_layer(model, methods, layer), ig_steps=ig_steps,
                              occlusion_patch=occlusion_patch, occlusion_stride=occlusion_stride,
                              igos_iterations=igos_iterations, igos_steps=igos_steps)
    dele: dict[str, list[float]] = {m: [] for m in [*methods, "random"]}
    ins: dict[str, list[float]] = {m: [] for m in dele}
    secs: dict[str, list[float]] = {m: [] for m in dele}
    ig_errs = []
    gen = torch.Generator().manual_seed(0)
    for p in tqdm(photos, desc="evaluate", unit="photo", disable=not progress):
        x = load_photo(p, model)
        with torch.no_grad():
            t = int(model(x).argmax(1))
        for m in dele:
            t0 = time.perf_counter()
            if m == "random":
                amap = torch.rand(x.shape[-2:], generator=gen)[None]
            else:
                amap, err = method_map(model, x, t, m, settings, gen)
                if err is not None:
                    ig_errs.append(err)
            secs[m].append(time.perf_counter() - t0)
            c = attr.deletion_insertion(model, x, amap.to(x.device), torch.tensor([t]), steps=steps)
            dele[m].append(float(c.deletion_auc[0]))
            ins[m].append(float(c.insertion_auc[0]))
    mean = lambda d: {k: float(np.mean(v)) for k, v in d.items()}  # noqa: E731
    return MethodScores(mean(dele), mean(ins), mean(secs), len(photos),
                        float(np.mean(ig_errs)) if ig_errs else None, dele, ins, settings.gradcam_layer)
