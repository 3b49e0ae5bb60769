"""A tiny seeded conv net for the optvis and render tests."""

from __future__ import annotations

import torch
from torch import nn


class Tiny(nn.Module):
    """conv (3->6, stride 2) -> relu -> conv2 (6->4) -> relu2 -> avgpool -> fc (4->5)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu(self.conv(x))))
        return self.fc(self.pool(x).flatten(1))
