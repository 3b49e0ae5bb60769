"""The layers collect can read: a spatial (C, H, W) layer, or a vision transformer's token layer
(T, C), whose patch tokens are the positions of its patch grid (:mod:`atlas.models.tokens`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from atlas.store.activations import LayerSpec

if TYPE_CHECKING:
    from atlas.models import AtlasModel


def layer_specs(model: AtlasModel, layers: Sequence[str]) -> list[LayerSpec]:
    """Channels and grid of each layer at the model's input size: a spatial (C, H, W) layer, or a
    token layer (T, C) of a vision transformer, whose patch tokens are the positions of its patch
    grid and whose leading class/register tokens are skipped (:mod:`atlas.models.tokens`)."""
    for name in layers:
        model.layer(name)  # raises with close matches for an unknown name
    shapes = model.layer_shapes(layers)
    specs = []
    for name in layers:
        shape = shapes.get(name)
        layout = None if shape is None else model.token_layout(shape)
        if layout is not None:
            specs.append(LayerSpec(name, shape[1], layout.grid, layout.describe(), layout.special))
            continue
        if shape is None or len(shape) != 3:
            usable = [n for n, s in model.layer_shapes().items() if len(s) == 3 or model.token_layout(s)]
            raise ValueError(
                f"layer {name!r} of {model.name} has output {'shape ' + str(shape) if shape else 'that is not a tensor'}, "
                f"neither (C, H, W) nor tokens (T, C): collect needs a spatial or token layer, e.g. one of "
                f"{usable[-8:]} (`atlas layers {model.name} --spatial` lists them)"
            )
        specs.append(LayerSpec(name, shape[0], (shape[1], shape[2])))
    return specs


def describe_tokens(specs: Sequence[LayerSpec]) -> str:
    """What was left out of the token layers among ``specs``, e.g. ``"encoder_layer_6: tokens
    cls+14x14, the 1 leading class/register token not collected"``; empty without token layers."""
    return "; ".join(f"{s.name}: tokens {s.token_layout}, the {s.skipped_tokens} leading class/register "
                     f"token{'s' if s.skipped_tokens != 1 else ''} not collected"
                     for s in specs if s.token_layout is not None)


__all__ = ["describe_tokens", "layer_specs"]
