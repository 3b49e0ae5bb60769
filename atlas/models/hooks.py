"""Forward hooks that record what named modules output, and can end the forward pass early.

:func:`record_outputs` is the one place hooks are put on modules to read their outputs: the
model's :func:`~atlas.models.capture` (layers by name), the collect stage's capture of the
layers it stores and feature visualization's evaluation of an objective all go through it.
:func:`layer_as_leaf` is the other kind, a hook that replaces a layer's output by a leaf so that
gradients stop there (collect's per-position attribution, the patch attack's push).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a recording hook once every wanted module has run: the rest of the forward
    pass is not needed. :func:`record_outputs` catches it at the end of its block."""


@contextmanager
def record_outputs(modules: Iterable[tuple[str, nn.Module]], *, detach: bool = False,
                   stop: bool = False, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   ) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each ``(name, module)`` during forward passes inside the block.

    Yields a dict ``{name: output}`` filled on every forward pass (the last call wins when a
    module runs twice). With ``detach=False`` the tensors stay in the graph, so gradients flow
    through them. With ``stop=True`` the forward pass that has run every module ends right after
    the last of them (:class:`StopForward`, caught here): the block ends there too, so code after
    that call in the block does not run. ``transform`` is applied to each output as it is
    recorded (e.g. :func:`atlas.models.tokens.grid_view`; a view keeps the graph). Hooks are
    removed on exit, also on error.
    """
    modules = list(modules)
    wanted = {name for name, _module in modules}
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            output = output.detach() if detach and isinstance(output, torch.Tensor) else output
            outputs[name] = transform(output) if transform is not None else output
            if stop and len(outputs) == len(wanted):
                raise StopForward

        return hook

    handles = []
    try:
        for name, module in modules:
            handles.append(module.register_forward_hook(make_hook(name)))
        try:
            yield outputs
        except StopForward:
            pass
    finally:
        for h in handles:
            h.remove()


@contextmanager
def layer_as_leaf(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Make ``module``'s output a leaf of the graph inside the block: the forward pass goes on
    from a detached copy that requires grad, yielded as ``{"h": leaf}``. A backward pass from
    the logits then stops at the layer (nothing below it is differentiated) and leaves
    ``d/dh`` in ``leaf.grad``. The hook is removed on exit, also on error."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        leaf = output.detach().requires_grad_(True)
        captured["h"] = leaf
        return leaf

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def layers_from_leaf(modules: Iterable[tuple[str, nn.Module]]) -> Iterator[dict[str, torch.Tensor]]:
    """:func:`layer_as_leaf` for several layers at once: the first of ``modules`` to run in a
    forward pass inside the block has its output replaced by a leaf, and the outputs of the
    others are recorded as they are, in the graph above that leaf. One backward pass from the
    logits then gives ``d/dh`` at every layer (``torch.autograd.grad(logits, [h, ...])``) and
    differentiates nothing below the lowest one. A module that does not run after the leaf's
    (a parallel branch) gives an output that does not require grad; callers check. Yields
    ``{name: output}``; hooks are removed on exit, also on error."""
    outputs: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            if not outputs:
                leaf = output.detach().requires_grad_(True)
                outputs[name] = leaf
                return leaf
            outputs[name] = output
            return None

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules]
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


__all__ = ["StopForward", "layer_as_leaf", "layers_from_leaf", "record_outputs"]
