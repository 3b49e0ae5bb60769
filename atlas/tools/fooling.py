"""Fooling images: unrecognizable pictures the model assigns a class with >= 99% confidence.

Nguyen, Yosinski, Clune, "Deep Neural Networks are Easily Fooled: High Confidence Predictions
for Unrecognizable Images", CVPR 2015. They evolved images or followed gradients from noise;
here the gradient route runs through the feature visualization engine
(:func:`atlas.optvis.render_vis`) with the objective :func:`class_log_prob` (the log-softmax of
the class, so that raising the class also lowers every other: a raw logit can rise while the
softmax stays spread), in two settings:

- ``priors=True``: the image priors of Olah et al., "Feature Visualization" (Distill 2017): the
  FFT parameterization with decorrelated color (:func:`atlas.optvis.fft_image`) and
  transformation robustness (:func:`atlas.optvis.standard_transforms`);
- ``priors=False``: raw pixels (:func:`atlas.optvis.pixel_image` without color decorrelation,
  only the sigmoid that keeps values in [0, 1]) and no transforms -- Nguyen et al.'s
  gradient-ascent fooling images.

The confidence is measured, not assumed: each final image is rounded to 8-bit pixels (what its
PNG holds), resized to the model's input size when it was rendered at another size, and scored
once more without any transform (:attr:`FoolingResult.confidence`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atlas.models import AtlasModel
from atlas.optvis.objectives import LOGITS, Objective

log = logging.getLogger(__name__)

__all__ = ["FoolingResult", "class_log_prob", "fooling_gallery", "fooling_images", "score_images"]


def class_log_prob(k: int) -> Objective:
    """The log-softmax of class ``k`` (B,), ``logit_k - logsumexp(logits)``: maximized, it drives
    the softmax of ``k`` toward 1 (Nguyen et al. 2015 maximize the softmax itself)."""

    def fn(acts) -> torch.Tensor:
        logits = acts[LOGITS]
        if not 0 <= k < logits.shape[1]:
            raise ValueError(f"class {k} is out of range for a model with {logits.shape[1]} classes")
        return logits.log_softmax(1)[:, k]

    return Objective(fn, f"log_softmax({k})", [LOGITS])


@dataclass
class FoolingResult:
    """Fooling images of ``classes``, one each.

    ``images``: (K, 3, S, S) in [0, 1] (rounded to 8-bit values); ``confidence``: (K,) the
    softmax of each image's class, re-scored without transforms at the model's input size;
    ``top``: (K,) the re-scored top-1 class; ``priors``: with the image priors or not;
    ``steps``: optimizer steps.
    """

    classes: list[int]
    names: list[str]
    images: torch.Tensor
    confidence: np.ndarray
    top: np.ndarray
    priors: bool
    steps: int

    def describe(self) -> str:
        kind = "FFT + transforms (priors)" if self.priors else "raw pixels, no transforms"
        lines = [f"{kind}, {self.steps} steps; confidence re-scored at the model's input size:"]
        for name, c, t, k in zip(self.names, self.confidence, self.top, self.classes):
            flag = ">= 99%" if c >= 0.99 else "below 99%"
            lines.append(f"  {name:<24} {100 * c:6.2f}%  ({flag}{'' if t == k else f'; top-1 is class {t}'})")
        return "\n".join(lines)


def score_images(model: AtlasModel, images: torch.Tensor) -> torch.Tensor:
    """Softmax (B, K) of ``images`` (B, 3, H, W) in [0, 1], rounded to 8-bit values and resized
    to the model's input size (bilinear) when they are another size; no transforms."""
    x = images.detach().clamp(0, 1).mul(255).round().div(255).to(model.device)
    s = model.input_size
    if tuple(x.shape[2:]) != (s, s):
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
    with torch.no_grad():
        return model(x).softmax(1).cpu()


def fooling_images(model: AtlasModel, classes: Sequence[int | str], *, priors: bool = True, size: int | None = None,
                   steps: int = 256, lr: float = 0.05, seed: int = 0, progress: bool = False) -> FoolingResult:
    """Optimize one image per class from noise until the model is sure of it (see the module docstring).

    ``classes``: names, WordNet ids or indices; ``size``: side of the rendered images (default
    the model's input size; other sizes are resampled to it for the model, during the
    optimization and the re-scoring alike); ``steps``, ``lr``: Adam's steps and learning rate;
    ``seed``: the random start (one generator per image) and the transforms.
    """
    from atlas.optvis import fft_image, pixel_image, render_vis, standard_transforms
    from atlas.resources import class_index

    if not classes:
        raise ValueError("give at least one class, e.g. classes=['toaster', 'goldfish']")
    names_all = model.class_names
    ks = []
    for c in classes:
        if isinstance(c, str):
            ks.append(class_index(c, names_all) if names_all else int(c))
        else:
            ks.append(int(c))
    size = size or model.input_size
    gens = [torch.Generator().manual_seed(seed * 1000 + i) for i in range(len(ks))]
    dev = model.device
    if priors:
        param = fft_image(size, len(ks), generator=gens, device=dev)
        transforms = standard_transforms()
    else:
        param = pixel_image(size, len(ks), decorrelate=False, generator=gens, device=dev)
        transforms = []
    objective = Objective.sum([_select(class_log_prob(k), i) for i, k in enumerate(ks)],
                              description=f"log_softmax of {len(ks)} classes")
    result = render_vis(model, objective, param, transforms, steps=steps, lr=lr, generator=gens, progress=progress,
                        input_size=model.input_size)
    images = result.images.mul(255).round().div(255)
    probs = score_images(model, images)
    conf = probs[torch.arange(len(ks)), torch.tensor(ks)].numpy()
    names = [names_all[k] if names_all else str(k) for k in ks]
    log.info("fooling images (%s): %s", "priors" if priors else "no priors",
             ", ".join(f"{n} {c:.4f}" for n, c in zip(names, conf)))
    return FoolingResult(ks, names, images, conf, probs.argmax(1).numpy(), priors, steps)


def _select(obj: Objective, i: int) -> Objective:
    """``obj`` read on image ``i`` of the batch only (zero for the others): image i fools class i."""

    def fn(acts) -> torch.Tensor:
        v = obj(acts)
        mask = torch.zeros_like(v)
        mask[i] = 1.0
        return v * mask

    return Objective(fn, f"{obj}[{i}]", obj.layers)


def fooling_gallery(results: Sequence[FoolingResult], out: str | os.PathLike, *, thumb: int = 160) -> Path:
    """A grid PNG: one row per result (e.g. with and without priors), one column per class, the
    class name and the re-scored confidence under each image."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("no fooling results to draw")
    ncols = max(len(r.classes) for r in results)
    fig, axes = plt.subplots(len(results), ncols, figsize=(1.9 * ncols, 2.35 * len(results)), squeeze=False)
    for row, r in zip(axes, results):
        imgs = F.interpolate(r.images, size=(thumb, thumb), mode="bilinear", align_corners=False, antialias=True)
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r.classes):
                ax.axis("off")
                continue
            ax.imshow(imgs[j].clamp(0, 1).permute(1, 2, 0).numpy())
            ok = r.confidence[j] >= 0.99
            ax.set_xlabel(f"{r.names[j][:20]}\n{100 * r.confidence[j]:.2f}%", fontsize=8,
                          color="black" if ok else "#b00000")
            if j == 0:
                ax.set_ylabel("FFT + transforms" if r.priors else "raw pixels", fontsize=9)
    fig.suptitle("fooling images: softmax confidence re-scored without transforms at the model's input size",
                 fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
