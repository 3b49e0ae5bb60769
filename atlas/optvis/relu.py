"""Redirected ReLU gradients for the first steps of an optimization (Lucid ``redirected_relu_grad``).

A unit behind a ReLU that is negative everywhere on the nearly gray starting image has a zero
gradient, so maximizing it never starts (e.g. many ``inception4c`` channels on a small image).
Lucid's ``render_vis`` therefore overrides the ReLU gradient for the first 16 steps: for an
image whose true ReLU gradient is entirely zero, it lets the gradient through wherever it would
push a negative input *up*, and still blocks it where it would push a negative input further
down. After those steps the ordinary gradient is used.

:func:`redirected_relu` applies this to every ``torch.relu`` / ``F.relu`` / ``nn.ReLU`` call made
inside the block (through a ``TorchFunctionMode``), so it works for any model without changing
it. The decision is made per image of the batch, so images stay independent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["redirected_relu"]


class _RedirectedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        negative = x < 0
        relu_grad = grad.masked_fill(negative, 0)
        # grad is d(loss)/d(out) and the loss is minimized: grad > 0 pushes the input down.
        redirected = grad.masked_fill(negative & (grad > 0), 0)
        if x.dim() < 2:
            return relu_grad
        dead = relu_grad.flatten(1).abs().amax(1) == 0  # (B,): nothing got through for this image
        return torch.where(dead.view(-1, *([1] * (x.dim() - 1))), redirected, relu_grad)


_RELUS = {F.relu, torch.relu, torch.Tensor.relu}


class _RedirectMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _RELUS:
            return _RedirectedReLU.apply(args[0])
        return func(*args, **kwargs)


@contextmanager
def redirected_relu(enabled: bool = True) -> Iterator[None]:
    """Inside the block, ReLUs backpropagate Lucid's redirected gradient (see the module docstring)."""
    if not enabled:
        yield
        return
    with _RedirectMode():
        yield
