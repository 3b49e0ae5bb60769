"""Attribution from the input gradient: the gradient itself (:func:`input_gradient`, :func:`saliency`),
with every ReLU's backward changed (:func:`guided_backprop`, :func:`deconvnet`), integrated along a
path from a baseline (:func:`integrated_gradients`) and averaged over noisy copies
(:func:`smoothgrad`); and the target classes every method resolves (``_targets``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atlas.models import AtlasModel

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
def _modified_relus(model: nn.Module, rule: str = "guided") -> Iterator[None]:
    """Change the backward pass of every ReLU of ``model`` for the block.

    ``rule="guided"`` (guided backpropagation): pass a gradient only where it is positive and the
    forward input was positive. ``rule="deconvnet"``: pass it where it is positive, whatever the
    forward input (Zeiler & Fergus reconstruct through a ReLU with the ReLU itself).
    """
    if rule not in ("guided", "deconvnet"):
        raise ValueError(f"unknown ReLU rule {rule!r}; use 'guided' or 'deconvnet'")
    guided = rule == "guided"

    class ModifiedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp):
            out = inp.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            (out,) = ctx.saved_tensors
            passed = grad.clamp(min=0)
            return passed * (out > 0).to(grad.dtype) if guided else passed

    handles = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(lambda _m, inp, _o: ModifiedReLU.apply(inp[0])))
    original = F.relu
    F.relu = lambda inp, inplace=False: ModifiedReLU.apply(inp)  # functional ReLUs (torchvision's googlenet)
    try:
        yield
    finally:
        F.relu = original
        for h in handles:
            h.remove()


def modified_relu_gradient(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                           rule: str = "guided") -> torch.Tensor:
    """d logit / d x with every ReLU's backward changed by ``rule`` ("guided" or "deconvnet",
    see :func:`_modified_relus`), (N, 3, H, W): the signal of guided backpropagation and of the
    deconvnet before their reduction over channels (Captum's ``GuidedBackprop`` and
    ``Deconvolution``)."""
    target = _targets(model, x, target)
    with _modified_relus(model, rule):
        return input_gradient(model, x, target)


def guided_backprop(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Guided backpropagation: max over channels of the positive-guided gradient, (N, H, W)."""
    return modified_relu_gradient(model, x, target, rule="guided").clamp(min=0).amax(1)


def deconvnet(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"):
    the input gradient with every ReLU's backward replaced by a ReLU of the incoming gradient
    (no forward mask). Reduced like :func:`guided_backprop` (positive part, max over channels)
    so the two differ only by the rule, (N, H, W)."""
    return modified_relu_gradient(model, x, target, rule="deconvnet").clamp(min=0).amax(1)


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
