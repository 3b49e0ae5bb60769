"""Steps 3 and 4 of the attack: a patch pasted into a corner of images at several sizes
(:func:`paste`), the model's answers at every size and corner (:func:`evaluate_patch`,
:class:`PatchEffect`: static and dynamic success rates), and the Wilson interval of a rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from atlas.models import AtlasModel

#: corner name -> (row, column) of the corner, 0 = top/left, 1 = bottom/right
CORNERS = {"tl": (0, 0), "tr": (0, 1), "bl": (1, 0), "br": (1, 1)}
DEFAULT_SIZES = (0.2, 0.3, 0.4, 0.5)
#: how many of the held-out views a rate is measured on decides its interval: Wilson, 95%
Z95 = 1.959964


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default): ``(low, high)`` in [0, 1]."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def paste(images: torch.Tensor, patch: torch.Tensor, frac: float, corner: str) -> torch.Tensor:
    """``images`` (N, 3, H, W) with ``patch`` (3, h, w) resized to ``round(frac * W)`` px square
    and pasted into ``corner`` (``tl``, ``tr``, ``bl``, ``br``); a new tensor."""
    if corner not in CORNERS:
        raise ValueError(f"unknown corner {corner!r}; use one of {', '.join(CORNERS)}")
    if not 0 < frac <= 1:
        raise ValueError(f"a patch size is a fraction of the image width in (0, 1], not {frac}")
    _, _, h, w = images.shape
    s = max(1, round(frac * w))
    p = F.interpolate(patch[None].float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0]
    cy, cx = CORNERS[corner]
    y0, x0 = cy * (h - s), cx * (w - s)
    out = images.clone()
    out[:, :, y0:y0 + s, x0:x0 + s] = p.clamp(0, 1).to(out)
    return out


@dataclass
class PatchEffect:
    """The model's response to one patch on N images at each size and corner.

    ``target_prob``, ``hit`` (top-1 == target): ``(n_sizes, n_corners, N)``; ``top1``: the same,
    the top-1 class. Corners in :data:`CORNERS` order.
    """

    sizes: tuple[float, ...]
    target_prob: np.ndarray
    hit: np.ndarray
    top1: np.ndarray

    def static(self, corner: str = "br") -> np.ndarray:
        """Success rate per size with the patch in one corner for every image."""
        return self.hit[:, list(CORNERS).index(corner)].mean(-1)

    def dynamic(self) -> np.ndarray:
        """Success rate per size with the best corner per image."""
        return self.hit.any(1).mean(-1)

    def dynamic_any_size(self) -> float:
        """Success rate with the best corner and size per image."""
        return float(self.hit.any((0, 1)).mean())

    def prob_static(self, corner: str = "br") -> np.ndarray:
        return self.target_prob[:, list(CORNERS).index(corner)].mean(-1)

    def prob_dynamic(self) -> np.ndarray:
        return self.target_prob.max(1).mean(-1)

    def subset(self, idx: np.ndarray) -> PatchEffect:
        return PatchEffect(self.sizes, self.target_prob[..., idx], self.hit[..., idx], self.top1[..., idx])


@torch.no_grad()
def predict(model: AtlasModel, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Softmax probabilities ``(N, K)`` of images ``(N, 3, S, S)`` in batches.

    The batches go in channels-last: the same float32 arithmetic (to rounding, ~3e-7 in the
    probabilities of InceptionV1), about 1.5x the images per second of a contiguous batch on
    a 2-core CPU, where the attack's thousands of pasted images are its cost."""
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(model.device).contiguous(memory_format=torch.channels_last)
        out.append(model(x).softmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_patch(model: AtlasModel, images: torch.Tensor, patch: torch.Tensor, target: int,
                   sizes: Sequence[float] = DEFAULT_SIZES, corners: Sequence[str] = tuple(CORNERS),
                   batch_size: int = 32) -> PatchEffect:
    """Paste ``patch`` on every image at every size and corner and record the model's answer."""
    n = len(images)
    prob = np.zeros((len(sizes), len(corners), n), np.float32)
    top1 = np.zeros((len(sizes), len(corners), n), np.int64)
    for i, frac in enumerate(sizes):
        for j, corner in enumerate(corners):
            p = predict(model, paste(images, patch, frac, corner), batch_size)
            prob[i, j] = p[:, target].numpy()
            top1[i, j] = p.argmax(1).numpy()
    return PatchEffect(tuple(float(s) for s in sizes), prob, top1 == target, top1)
