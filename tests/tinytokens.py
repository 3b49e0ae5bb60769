"""Tiny seeded token models for the tests of token layers (a vision transformer's (B, T, C)).

- :class:`TinyTokens`: made by hand: 8 px patches of a 32 px image (a 4 x 4 grid), a class token
  and ``registers`` register tokens in front, a per-token MLP (``block.1``, after the GELU:
  (T, 12)), one mixing step across tokens, then a head on the class token. No attention, so it
  runs in milliseconds; the token order is the ViTs' own (special tokens first, patches row-major).
- :func:`small_vit`: a torchvision ``VisionTransformer`` of 32 px, 8 px patches, 3 layers of width
  16: the real attention and MLP blocks of ``vit_b_16`` at a size that runs in a test.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyTokens(nn.Module):
    """32 px -> 4 x 4 patch tokens of width 8 (+ 1 + ``registers`` special tokens) -> 5 logits."""

    def __init__(self, registers: int = 0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch = nn.Conv2d(3, 8, 8, stride=8)
        self.special = nn.Parameter(torch.zeros(1, 1 + registers, 8))
        self.block = nn.Sequential(nn.Linear(8, 12), nn.GELU())  # "block.1": the MLP's hidden layer
        self.mix = nn.Linear(12, 12)  # "mix": (T, 12) after every token has seen the others
        self.head = nn.Linear(12, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 16, 8), row-major patches
        t = torch.cat([self.special.expand(x.shape[0], -1, -1), t], 1)
        h = self.block(t)
        h = h + torch.tanh(h).mean(1, keepdim=True)  # each token sees all others
        h = self.mix(h)
        return self.head(torch.tanh(h[:, 0]) + torch.tanh(h[:, 1:]).mean(1))


def small_vit(seed: int = 0) -> nn.Module:
    """A seeded torchvision ``VisionTransformer`` (32 px, 8 px patches: cls + 4 x 4 tokens, 3 layers)."""
    from torchvision.models import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                mlp_dim=32, num_classes=5)
        with torch.no_grad():  # torchvision zero-initializes the head: every logit would be 0
            for p in net.heads.parameters():
                p.copy_(torch.randn(p.shape) * 0.5)
    return net
