"""Attribution by changing the input and scoring it again: occlusion sensitivity
(:func:`occlusion`, a grey patch slid over the image) and I-GOS (:func:`igos`, a smooth mask
optimized for deletion and insertion)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from atlas.models import AtlasModel
from atlas.tools.attribution.evaluation import _gaussian_blur
from atlas.tools.attribution.gradients import _targets

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
"""The ImageNet mean colour in RGB [0, 1]: the grey of :func:`occlusion`'s patch by default."""


def _patch_starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # the last patch touches the border, so every pixel is covered
        starts.append(size - patch)
    return starts


def occlusion(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
              patch: int = 32, stride: int = 16, fill: Sequence[float] | float = IMAGENET_MEAN_RGB,
              batch_size: int = 16) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014): for every position of a ``patch`` x ``patch``
    square slid with ``stride`` (the last row and column of positions touch the border), the
    image with that square filled by ``fill`` (an RGB [0, 1] colour, by default the ImageNet
    mean) is scored, and the drop ``logit(x) - logit(occluded)`` of the target is spread over the
    square's pixels; each pixel gets the mean drop of the squares covering it. ``batch_size``
    occluded copies per forward pass. Returns (N, H, W); costs ``ceil((H - patch) / stride + 1)
    * ceil((W - patch) / stride + 1)`` forward passes per image.
    """
    n, c, h, w = x.shape
    if not 1 <= patch <= min(h, w):
        raise ValueError(f"occlusion patch {patch} must be between 1 and the image side {min(h, w)}")
    if stride < 1:
        raise ValueError(f"occlusion stride must be at least 1, not {stride}")
    target = _targets(model, x, target)
    colour = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if colour.numel() not in (1, c):
        raise ValueError(f"fill must be one value or {c} (one per channel), not {colour.numel()}")
    colour = colour.expand(c).view(1, c, 1, 1)
    boxes = [(y0, x0) for y0 in _patch_starts(h, patch, stride) for x0 in _patch_starts(w, patch, stride)]
    heat = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    count = torch.zeros(h, w, dtype=x.dtype, device=x.device)
    for y0, x0 in boxes:
        count[y0:y0 + patch, x0:x0 + patch] += 1
    with torch.no_grad():
        base = model(x).gather(1, target[:, None])[:, 0]
        for i in range(n):
            for start in range(0, len(boxes), batch_size):
                chunk = boxes[start:start + batch_size]
                batch = x[i:i + 1].repeat(len(chunk), 1, 1, 1)
                for j, (y0, x0) in enumerate(chunk):
                    batch[j, :, y0:y0 + patch, x0:x0 + patch] = colour[0]
                drops = base[i] - model(batch)[:, int(target[i])]
                for (y0, x0), d in zip(chunk, drops):
                    heat[i, y0:y0 + patch, x0:x0 + patch] += d
    return heat / count


@dataclass
class IGOSResult:
    """I-GOS: ``map`` (N, H, W) = 1 - the upsampled mask (high = deleting it hurts the class),
    ``mask`` (N, s, s) the optimized low-resolution mask (1 keeps the pixel, 0 replaces it by
    the baseline), ``losses`` the objective per image at the start and after each iteration
    (iterations + 1 rows of N values) and ``steps`` the line-search step taken at each iteration
    (0 where none lowered the objective)."""

    map: torch.Tensor
    mask: torch.Tensor
    losses: list[list[float]] = field(default_factory=list)
    steps: list[list[float]] = field(default_factory=list)


def igos(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
         size: int = 28, iterations: int = 10, ig_steps: int = 10, l1: float = 1.0, tv: float = 20.0,
         step: float = 8.0, decay: float = 0.2, armijo: float = 1e-4, min_step: float = 1e-5,
         baseline: torch.Tensor | None = None, blur_sigma: float = 10.0, noise: float = 0.05,
         insertion: bool = True, generator: torch.Generator | None = None) -> IGOSResult:
    """I-GOS (Qi, Khorram, Li 2020, "Visualizing Deep Networks by Optimizing with Integrated
    Gradients"): optimize a ``size`` x ``size`` mask ``M`` in [0, 1], upsampled bilinearly to the
    image, with ``phi(I, B, M) = I * M + B * (1 - M)`` (``B``: ``baseline``, by default the
    image blurred with ``blur_sigma`` like the deletion/insertion metric), minimizing

        D(M) - I(M) + l1 * mean|1 - M| + tv * TV2(M)

    where the deletion score ``D(M) = 1/T sum_t p(phi(I, B, t/T M))`` and the insertion score
    ``I(M) = 1/T sum_t p(phi(B, I, t/T M))`` (``p``: the target's softmax probability, ``T =
    ig_steps``) average along the straight path from the baseline, so their gradients are the
    integrated gradients of the paper; ``TV2`` is the mean squared difference of neighbouring mask
    cells. Gaussian noise of std ``noise`` is added to the path images of the gradient (as the
    authors do) but not to the line search. Each of the ``iterations`` descends along the summed
    gradient with a backtracking line search: start at ``step``, multiply by ``decay`` until
    the objective falls by at least ``armijo * step * |grad|^2`` (below ``min_step``, the last
    step is taken only if it lowers the objective at all, else the mask stays), and clip the mask
    to [0, 1]. ``insertion=False`` keeps only the deletion term.
    Defaults follow the authors' code where it has them (L1 weight 1, TV weight 20, 28 x 28 mask,
    first step 8, decay 0.2, Armijo constant 1e-4, smallest step 1e-5).

    Cost per image and iteration: ``2 * ig_steps`` forward + backward passes for the gradient
    and ``2 * ig_steps`` forward passes per line-search trial. The defaults (10 iterations,
    10 steps) are cheaper than the authors' (15 to 20 iterations, 15 to 20 steps) to stay usable on
    a CPU; raise them for maps closer to the paper's.
    """
    if size < 1 or iterations < 1 or ig_steps < 1:
        raise ValueError(f"I-GOS needs size, iterations and ig_steps >= 1 (got {size}, {iterations}, {ig_steps})")
    if not 0 < decay < 1:
        raise ValueError(f"line-search decay must be in (0, 1), not {decay}")
    target = _targets(model, x, target)
    x = x.detach()
    base = _gaussian_blur(x, blur_sigma) if baseline is None else baseline.to(x).expand_as(x).detach()
    n, _, h, w = x.shape
    ts = (torch.arange(1, ig_steps + 1, dtype=x.dtype, device=x.device) / ig_steps).view(-1, 1, 1, 1)

    def up(m: torch.Tensor) -> torch.Tensor:  # (1, 1, s, s) -> (1, 1, H, W)
        return F.interpolate(m, size=(h, w), mode="bilinear", align_corners=True)

    def regulariser(m: torch.Tensor) -> torch.Tensor:
        return l1 * (1 - m).abs().mean() + tv * (((m[..., 1:, :] - m[..., :-1, :]) ** 2).mean()
                                                 + ((m[..., :, 1:] - m[..., :, :-1]) ** 2).mean())

    def path_score(src: torch.Tensor, dst: torch.Tensor, m_up: torch.Tensor, t: int, eps: float) -> torch.Tensor:
        imgs = src * (ts * m_up) + dst * (1 - ts * m_up)  # (T, 3, H, W): phi(src, dst, t/T M)
        if eps > 0:
            imgs = imgs + eps * torch.randn(imgs.shape, generator=generator, device="cpu").to(imgs)
        return model(imgs).softmax(1)[:, t].mean()

    def objective(i: int, m: torch.Tensor) -> float:
        with torch.no_grad():
            m_up, t = up(m), int(target[i])
            val = path_score(x[i:i + 1], base[i:i + 1], m_up, t, 0.0) + regulariser(m)
            if insertion:
                val = val - path_score(base[i:i + 1], x[i:i + 1], m_up, t, 0.0)
        return float(val)

    masks = torch.ones(n, 1, size, size, dtype=x.dtype, device=x.device)
    current = [objective(i, masks[i:i + 1]) for i in range(n)]
    losses: list[list[float]] = [list(current)]
    steps: list[list[float]] = []
    for _ in range(iterations):
        steps.append([])
        for i in range(n):
            t = int(target[i])
            m = masks[i:i + 1].clone().requires_grad_(True)
            with torch.enable_grad():
                m_up = up(m)
                total = path_score(x[i:i + 1], base[i:i + 1], m_up, t, noise) + regulariser(m)
                if insertion:
                    total = total - path_score(base[i:i + 1], x[i:i + 1], m_up, t, noise)
                (grad,) = torch.autograd.grad(total, m)
            sq = float((grad**2).sum())
            alpha = step
            while True:
                trial = (masks[i:i + 1] - alpha * grad).clamp(0, 1)
                value = objective(i, trial)
                if value <= current[i] - armijo * alpha * sq:
                    break
                if alpha * decay < min_step:  # no step decreases the objective enough
                    alpha = alpha if value < current[i] else 0.0
                    break
                alpha *= decay
            if alpha > 0:
                masks[i:i + 1] = trial
                current[i] = value
            steps[-1].append(alpha)
        losses.append(list(current))
    heat = 1 - F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)[:, 0]
    return IGOSResult(heat, masks[:, 0], losses, steps)
