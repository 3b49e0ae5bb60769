"""Image priors: penalties on the picture itself, added to an objective during optimization.

:func:`border_penalty` is the frame prior of atlas icons: an icon's outer pixels are pulled
toward a smooth, mid-gray frame (the boundary-complexity penalty of dreamlens's icon renderer,
after the gray-frame look of the Distill atlas's icons). Without it the outer ring of an icon
fills with textures that the model sees only at the edge of its view; when the icon is later
looked at (or scored) whole, those textures pull its activation away from the cell's direction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def border_penalty(images: torch.Tensor, width: int = 5, gray: float = 0.5, blur: int = 5,
                   gray_weight: float = 0.8) -> torch.Tensor:
    """Per image, the mean over the outer ``width`` pixels of ``(blur(x) - x)^2 + gray_weight (x - gray)^2``.

    Args:
        images: (B, 3, H, W) RGB in [0, 1].
        width: the frame's width in pixels (images no larger than ``2 width`` get no penalty).
        gray: the value the frame is pulled toward.
        blur: side of the box blur whose difference measures the frame's detail.
        gray_weight: weight of the pull toward ``gray`` against the smoothness term.

    Returns:
        (B,) non-negative penalties, 0 for a flat ``gray`` frame.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    if h <= 2 * width or w <= 2 * width or width < 1:
        return images.new_zeros(b)
    mask = torch.ones((1, 1, h, w), dtype=images.dtype, device=images.device)
    mask[:, :, width:h - width, width:w - width] = 0
    pad = blur // 2
    smooth = F.avg_pool2d(F.pad(images, (pad, pad, pad, pad), mode="replicate"), blur, stride=1)
    terms = (smooth - images) ** 2 + gray_weight * (images - gray) ** 2
    return (terms * mask).sum(dim=(1, 2, 3)) / (mask.sum() * c)
