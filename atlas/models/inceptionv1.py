"""InceptionV1 (GoogLeNet) as trained by BVLC in Caffe.

Szegedy et al., "Going Deeper with Convolutions", CVPR 2015, in the BVLC Caffe replication
(``bvlc_googlenet``): LRN after pool1 and conv3, true 5x5 convolutions in the third branch,
no batch-norm, ceil-mode max-pooling, and no auxiliary heads. The module names match the
keys of ``bvlc_googlenet.pth`` one for one, so ``load_state_dict(strict=True)`` succeeds.

The network expects Caffe input: BGR, 0..255, mean (104, 117, 123) subtracted. Use
:func:`caffe_preprocess` (done for you inside :class:`atlas.models.AtlasModel`) to feed it
RGB images in [0, 1].

Every ``inceptionXY`` module outputs the post-ReLU concatenation of its four branches, which
is what Lucid calls ``mixedXY``; at 224x224 input ``inception4c`` is (N, 512, 14, 14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)

# (in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) from table 1 of the GoogLeNet paper.
_BLOCKS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


class LRN(nn.Module):
    """Caffe local response normalization across channels (size 5, alpha 1e-4, beta 0.75, k 1).

    ``x / (k + alpha / size * sum_{|c' - c| <= size // 2} x_c'^2) ^ beta``, the same values as
    ``F.local_response_norm``; the windowed channel sum is a 1x1 convolution with a banded 0/1
    matrix, several times faster on CPUs (especially channels-last) than the pooling it replaces.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self._band: dict[tuple, torch.Tensor] = {}

    def band(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        key = (channels, like.dtype, like.device)
        if key not in self._band:
            c = torch.arange(channels, device=like.device)
            lo, hi = self.size // 2, (self.size - 1) // 2  # F.local_response_norm's window
            diff = c[None, :] - c[:, None]
            self._band[key] = ((diff >= -lo) & (diff <= hi)).to(like.dtype)[:, :, None, None]
        return self._band[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = F.conv2d(x * x, self.band(x.shape[1], x))
        return x / (self.k + self.alpha / self.size * window).pow(self.beta)


class Inception(nn.Module):
    """One inception block: four branches concatenated along channels, each ending in a ReLU.

    Every ReLU is its own ``nn.ReLU`` module (``relu1``, ``relu2_reduce``, ``relu2``, ...), not a
    functional call, so tools that change a ReLU's backward pass through module hooks (guided
    backpropagation and deconvnet here and in Captum) reach all of them. They hold no weights,
    so the checkpoint's keys are unchanged.
    """

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int):
        super().__init__()
        self.branch1 = nn.Conv2d(c_in, c1, 1)
        self.branch2 = nn.Sequential(nn.Conv2d(c_in, c3r, 1), nn.Conv2d(c3r, c3, 3, padding=1))
        self.branch3 = nn.Sequential(nn.Conv2d(c_in, c5r, 1), nn.Conv2d(c5r, c5, 5, padding=2))
        self.branch4 = nn.Conv2d(c_in, cp, 1)
        self.relu1 = nn.ReLU()
        self.relu2_reduce, self.relu2 = nn.ReLU(), nn.ReLU()
        self.relu3_reduce, self.relu3 = nn.ReLU(), nn.ReLU()
        self.relu4 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.relu1(self.branch1(x))
        b2 = self.relu2(self.branch2[1](self.relu2_reduce(self.branch2[0](x))))
        b3 = self.relu3(self.branch3[1](self.relu3_reduce(self.branch3[0](x))))
        b4 = self.relu4(self.branch4(F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)))
        return torch.cat([b1, b2, b3, b4], dim=1)


class InceptionV1(nn.Module):
    """BVLC GoogLeNet. Input: Caffe-preprocessed (N, 3, H, W) BGR; output: (N, 1000) logits.

    Hookable points: ``conv1_relu``, ``pool1``, ``conv2_relu``, ``conv3_relu``, ``pool2``,
    ``inception3a`` .. ``inception5b`` (post-ReLU concatenations), ``pool3``, ``pool4``,
    ``avgpool`` and ``fc`` (logits). ``conv1``..``conv3`` themselves are pre-ReLU.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.conv1_relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.lrn1 = LRN()
        self.conv2 = nn.Conv2d(64, 64, 1)
        self.conv2_relu = nn.ReLU()
        self.conv3 = nn.Conv2d(64, 192, 3, padding=1)
        self.conv3_relu = nn.ReLU()
        self.lrn2 = LRN()
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("inception3a", "inception3b"):
            setattr(self, name, Inception(*_BLOCKS[name]))
        self.pool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            setattr(self, name, Inception(*_BLOCKS[name]))
        self.pool4 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name in ("inception5a", "inception5b"):
            setattr(self, name, Inception(*_BLOCKS[name]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrn1(self.pool1(self.conv1_relu(self.conv1(x))))
        x = self.conv2_relu(self.conv2(x))
        x = self.pool2(self.lrn2(self.conv3_relu(self.conv3(x))))
        x = self.inception3b(self.inception3a(x))
        x = self.pool3(x)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, name)(x)
        x = self.pool4(x)
        x = self.inception5b(self.inception5a(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


def caffe_preprocess(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], (N, 3, H, W) -> Caffe input: BGR, 0..255, BVLC mean subtracted.

    Differentiable, so feature visualization can optimize RGB images through it.
    """
    mean = torch.tensor(CAFFE_MEAN_BGR, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - mean
