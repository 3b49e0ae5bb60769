"""Attribution maps over the input pixels, and their deletion / insertion evaluation.

Every method takes an :class:`~atlas.models.AtlasModel` (RGB [0, 1] in, logits out), an image
batch ``x`` (N, 3, H, W) and target classes (N,), and returns a map (N, H, W) (channels reduced as
each paper does) -- except :func:`integrated_gradients`, which also returns its completeness
error. Gradients are taken with respect to the [0, 1] RGB input, so maps of every model compare.

- :func:`saliency`: Simonyan, Vedaldi, Zisserman 2014, |d logit / d x| max over channels.
- :func:`guided_backprop`: Springenberg et al. 2015: ReLUs pass only positive gradients where
  the input was positive; done with backward hooks on ``nn.ReLU`` modules and by swapping
  ``F.relu`` in modules that call it functionally (both undone afterwards).
- :func:`grad_cam`: Selvaraju et al. 2017 at a chosen layer: ReLU(sum_c alpha_c A_c) with
  alpha_c the spatial mean of d logit / d A_c, upsampled bilinearly to the input.
- :func:`integrated_gradients`: Sundararajan, Taly, Yan 2017, Riemann sum (midpoint rule) from a
  baseline (black by default); completeness ``sum(attr) ~ f(x) - f(baseline)`` reported.
- :func:`smoothgrad`: Smilkov et al. 2017: any gradient method averaged over noisy copies.
- :func:`deletion_insertion`: Petsiuk, Das, Saenko 2018 (RISE): remove (or reveal) the most
  attributed pixels step by step and record the class probability; area under each curve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atlas.models import AtlasModel, capture

AttributionFn = Callable[[AtlasModel, torch.Tensor, torch.Tensor], torch.Tensor]


def _targets(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    if isinstance(target, int):
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    return target.to(x.device).long()


def input_gradient(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """d logit_target / d x, shape (N, 3, H, W)."""
    target = _targets(model, x, target)
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        picked = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return grad


def saliency(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Vanilla gradient saliency: max over channels of |d logit / d x|, (N, H, W)."""
    return input_gradient(model, x, target).abs().amax(1)


@contextlib.contextmanager
def _guided_relus(model: nn.Module) -> Iterator[None]:
    """Make every ReLU of ``model`` pass only positive gradients (guided backpropagation)."""

    class GuidedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp):
            out = inp.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            (out,) = ctx.saved_tensors
            return grad.clamp(min=0) * (out > 0).to(grad.dtype)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(lambda _m, inp, _o: GuidedReLU.apply(inp[0])))
    original = F.relu
    F.relu = lambda inp, inplace=False: GuidedReLU.apply(inp)  # functional ReLUs (InceptionV1, googlenet)
    try:
        yield
    finally:
        F.relu = original
        for h in handles:
            h.remove()


def guided_backprop(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Guided backpropagation: max over channels of the positive-guided gradient, (N, H, W)."""
    target = _targets(model, x, target)
    with _guided_relus(model):
        grad = input_gradient(model, x, target)
    return grad.clamp(min=0).amax(1)


def grad_cam(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
             layer: str = "inception4e") -> torch.Tensor:
    """Grad-CAM at ``layer`` (must be spatial), upsampled to the input size, (N, H, W)."""
    target = _targets(model, x, target)
    with torch.enable_grad(), capture(model, [layer]) as acts:
        logits = model(x.detach().clone().requires_grad_(True))  # params are frozen: the graph starts at x
        a = acts[layer]
        if a.dim() != 4:
            raise ValueError(f"Grad-CAM needs a spatial layer (N, C, H, W); {layer!r} gives {tuple(a.shape)}")
        (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    weights = g.mean((2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True)).detach()
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@dataclass
class IGResult:
    """Integrated gradients: ``attribution`` (N, 3, H, W), its channel-summed ``map`` (N, H, W),
    and the completeness check per image: ``sum(attribution)`` vs ``f(x) - f(baseline)``."""

    attribution: torch.Tensor
    map: torch.Tensor
    attribution_sum: torch.Tensor
    logit_difference: torch.Tensor

    @property
    def completeness_error(self) -> torch.Tensor:
        """|sum(attr) - (f(x) - f(b))| / |f(x) - f(b)|, per image."""
        return (self.attribution_sum - self.logit_difference).abs() / self.logit_difference.abs().clamp(min=1e-8)


def integrated_gradients(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                         baseline: torch.Tensor | float = 0.0, steps: int = 32,
                         batch_size: int = 16) -> IGResult:
    """Integrated gradients from ``baseline`` (a tensor like ``x`` or a gray level) in ``steps``.

    Uses the midpoint Riemann sum, whose error falls as 1/steps^2 for smooth paths.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    target = _targets(model, x, target)
    x = x.detach()
    base = torch.full_like(x, float(baseline)) if not torch.is_tensor(baseline) else baseline.to(x).expand_as(x)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for start in range(0, steps, batch_size):
            a = alphas[start:start + batch_size].view(-1, 1, 1, 1)
            path = base[n:n + 1] + a * (x[n:n + 1] - base[n:n + 1])
            total[n] += input_gradient(model, path, int(target[n])).sum(0)
    attr = (x - base) * total / steps
    with torch.no_grad():
        diff = (model(x) - model(base)).gather(1, target[:, None])[:, 0]
    return IGResult(attr, attr.sum(1), attr.flatten(1).sum(1), diff)


def smoothgrad(method: AttributionFn, model: AtlasModel, x: torch.Tensor,
               target: torch.Tensor | int | None = None, *, samples: int = 16, noise: float = 0.15,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Average ``method`` over ``samples`` copies of ``x`` with Gaussian noise of std
    ``noise * (max - min)`` (Smilkov et al. use 10-20%)."""
    target = _targets(model, x, target)
    sigma = noise * (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    acc = None
    for _ in range(samples):
        eps = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        m = method(model, (x + sigma * eps).clamp(0, 1), target)
        acc = m if acc is None else acc + m
    return acc / samples


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


METHODS: dict[str, AttributionFn] = {
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "grad_cam": grad_cam,
    "integrated_gradients": lambda m, x, t: integrated_gradients(m, x, t).map.abs(),
}
