"""Token layers: where a vision transformer's (batch, tokens, channels) meets the (C, H, W) grid.

A convolutional layer's output is (B, C, H, W): a C-vector at every cell of an H x W grid. A
vision transformer keeps its activations as tokens, (B, T, C): a few *special* tokens first (the
class token; register or distillation tokens where the model has them), then one token per
image patch, in row-major order over the patch grid. Every stage of the atlas reads positions
of a grid, so a token layer is read as its patch tokens laid out on the patch grid, a view
(B, C, H, W) of the same memory; the special tokens are not positions and are left out.

This module is the one place that conversion is made:

- :func:`token_layout` reads a layer's output shape (without the batch) and says whether it is
  a token layer and how its tokens lie (:class:`TokenLayout`): ``T = special + H * W``. When the
  model's patch grid is known (``AtlasModel.token_grid``: torchvision's and timm's ViTs, or given
  to :func:`~atlas.models.load_model`), ``special = T - H * W``; otherwise the grid is the
  largest square of at most T tokens and the tokens beyond it are the special ones (197 tokens:
  a class token and 14 x 14 patches).
- :meth:`TokenLayout.to_grid` and :meth:`TokenLayout.to_tokens` convert (..., T, C) to
  (..., C, H, W) and back; :func:`grid_view` converts a batch of a layer's output when it is
  made of tokens and leaves any other output as it is.

Special tokens are taken to come first, as in torchvision's and timm's ViTs; a model that puts
them after the patches is not supported (its layers would be read wrongly). A (B, C, L) output
of a 1-D convolution has the same rank as tokens and would be read as tokens; image classifiers
have none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TokenLayout", "grid_view", "token_layout", "vit_token_grid"]


@dataclass(frozen=True)
class TokenLayout:
    """How the tokens of a layer lie: ``special`` leading tokens, then ``grid`` (H, W) patches."""

    special: int
    grid: tuple[int, int]

    @property
    def n_tokens(self) -> int:
        return self.special + self.grid[0] * self.grid[1]

    def describe(self) -> str:
        """``"cls+14x14"`` (a class token and 14 x 14 patches), ``"14x14"`` (patches only) or
        ``"5+14x14"`` (five leading special tokens: a class token and registers, say)."""
        h, w = self.grid
        lead = {0: "", 1: "cls+"}.get(self.special, f"{self.special}+")
        return f"{lead}{h}x{w}"

    def token_index(self, y: int, x: int) -> int:
        """The index among the T tokens of the patch at grid position (y, x)."""
        return self.special + y * self.grid[1] + x

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., T, C) -> the patch tokens as (..., C, H, W), a view (writes go to ``tokens``)."""
        if tokens.dim() < 2 or tokens.shape[-2] != self.n_tokens:
            raise ValueError(f"expected (..., {self.n_tokens}, C) tokens for layout {self.describe()}, "
                             f"got shape {tuple(tokens.shape)}")
        patches = tokens[..., self.special:, :]
        return patches.unflatten(-2, self.grid).movedim(-1, -3)

    def to_tokens(self, grid: torch.Tensor, special: torch.Tensor | None = None) -> torch.Tensor:
        """(..., C, H, W) -> (..., T, C): the patches in token order after ``special`` (..., S, C)
        (zeros when None)."""
        if tuple(grid.shape[-2:]) != self.grid:
            raise ValueError(f"expected a (..., C, {self.grid[0]}, {self.grid[1]}) grid, got {tuple(grid.shape)}")
        patches = grid.movedim(-3, -1).flatten(-3, -2)
        if special is None:
            special = patches.new_zeros((*patches.shape[:-2], self.special, patches.shape[-1]))
        if special.shape[-2] != self.special:
            raise ValueError(f"layout {self.describe()} has {self.special} special tokens, got {special.shape[-2]}")
        return torch.cat([special, patches], dim=-2)


def token_layout(shape: Sequence[int], grid: tuple[int, int] | None = None) -> TokenLayout | None:
    """The :class:`TokenLayout` of a layer whose output (without the batch) has ``shape``, or None
    when it is not a token layer (a (C, H, W) layer, a flat one, ...).

    ``shape`` must be (T, C). With the model's patch ``grid`` (H, W), it is a token layer when
    ``T >= H * W``, with ``T - H * W`` special tokens; without, the grid is the largest square of
    at most T tokens (at least 2 x 2) and the rest are special.
    """
    if len(shape) != 2:
        return None
    t = int(shape[0])
    if grid is not None:
        h, w = (int(v) for v in grid)
        return TokenLayout(t - h * w, (h, w)) if t >= h * w > 0 else None
    side = math.isqrt(t)
    if side < 2:
        return None
    return TokenLayout(t - side * side, (side, side))


def grid_view(output: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A batch of a layer's output as a grid: tokens (B, T, C) as their patch grid (B, C, H, W)
    (:meth:`TokenLayout.to_grid`, a view); any other output as it is."""
    if not isinstance(output, torch.Tensor):
        return output
    layout = token_layout(output.shape[1:], grid)
    return output if layout is None else layout.to_grid(output)


def vit_token_grid(net: nn.Module) -> tuple[int, int] | None:
    """The patch grid (H, W) of a torchvision ``VisionTransformer`` (``image_size // patch_size``)
    or of a timm ViT (``patch_embed.grid_size``) at its input size; None for anything else."""
    image_size, patch_size = getattr(net, "image_size", None), getattr(net, "patch_size", None)
    if isinstance(image_size, int) and isinstance(patch_size, int) and patch_size > 0:
        side = image_size // patch_size
        return side, side
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        return int(grid[0]), int(grid[1])
    return None
