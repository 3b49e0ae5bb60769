"""The deletion / insertion evaluation of attribution maps (:func:`deletion_insertion`, Petsiuk et
al. 2018), and the Gaussian blur its insertion starts from (which I-GOS's baseline shares)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from atlas.models import AtlasModel
from atlas.tools.attribution.gradients import _targets


@dataclass
class CurveResult:
    """Probability of the class after each step: ``deletion`` and ``insertion`` (N, steps + 1),
    and the normalised areas under them (trapezoid rule on [0, 1])."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self.insertion, self.fractions, axis=1)


def deletion_insertion(model: AtlasModel, x: torch.Tensor, maps: torch.Tensor,
                       target: torch.Tensor | int | None = None, *, steps: int = 16,
                       blur_sigma: float = 10.0) -> CurveResult:
    """Deletion and insertion curves (Petsiuk et al. 2018) for attribution ``maps`` (N, H, W).

    Deletion: pixels in descending order of attribution are replaced by black, a fraction
    ``k / steps`` at a time; a good map makes the probability fall fast (low AUC). Insertion:
    starting from a blurred image, the most attributed pixels are revealed first; a good map
    makes it rise fast (high AUC). Ties are broken by a fixed pixel order.
    """
    target = _targets(model, x, target)
    n, _, h, w = x.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)  # (N, H*W)
    blurred = _gaussian_blur(x, blur_sigma)
    fractions = np.linspace(0, 1, steps + 1)
    dele = np.zeros((n, steps + 1))
    ins = np.zeros((n, steps + 1))
    with torch.no_grad():
        for k, frac in enumerate(fractions):
            top = int(round(frac * h * w))
            mask = torch.zeros(n, h * w, device=x.device)
            mask.scatter_(1, order[:, :top], 1.0)
            mask = mask.view(n, 1, h, w)
            deleted = x * (1 - mask)
            inserted = blurred * (1 - mask) + x * mask
            probs = model(torch.cat([deleted, inserted])).softmax(1)
            p = probs.gather(1, torch.cat([target, target])[:, None])[:, 0].cpu().numpy()
            dele[:, k], ins[:, k] = p[:n], p[n:]
    return CurveResult(fractions, dele, ins)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
