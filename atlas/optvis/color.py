"""Decorrelated color: the ImageNet color correlation that the parameterizations and the spectrum share.

Olah et al., "Feature Visualization" (Distill 2017) optimize images in a decorrelated color space
and map them to RGB with the square root of ImageNet's color correlation matrix (Lucid's
``_linear_decorelate_color``); :mod:`atlas.optvis.param` applies it, :mod:`atlas.optvis.spectrum`
inverts it to measure photos in the same space.
"""

from __future__ import annotations

import numpy as np
import torch

#: Square root of the color correlation matrix of ImageNet (Lucid's ``color_correlation_svd_sqrt``),
#: rows = output RGB channel, columns = decorrelated input channel.
COLOR_CORRELATION_SVD_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)


def color_correlation_normalized() -> torch.Tensor:
    """Lucid's color matrix divided by its largest column norm, (3, 3) float32.

    Applied as ``rgb[:, i] = sum_j M[i, j] * t[:, j]`` (Lucid: ``t_flat @ M.T`` in NHWC).
    """
    m = COLOR_CORRELATION_SVD_SQRT
    return torch.from_numpy(m / np.max(np.linalg.norm(m, axis=0)))


__all__ = ["COLOR_CORRELATION_SVD_SQRT", "color_correlation_normalized"]
