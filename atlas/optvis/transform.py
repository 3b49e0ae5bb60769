"""Random, differentiable image transforms applied before each optimization step.

Transformation robustness (Olah et al., "Feature Visualization", Distill 2017; Lucid's
``lucid.optvis.transform``): jittering, scaling and rotating the image a little at every step
keeps the optimizer from exploiting high-frequency patterns that only work at one exact
alignment.

Each factory returns a small callable ``t(images, rng) -> images`` on batches (B, 3, H, W);
they are composed as a plain list (see :func:`apply`). ``rng`` is explicit, never a global:
either one ``torch.Generator`` (items draw from it in batch order), a sequence of B
generators, where item b draws only from generator b, or a :class:`~atlas.optvis.rng.BatchRNG`
(B streams drawn in one vectorized call; what :func:`~atlas.optvis.render_vis` uses). With one
stream per item, a batch transforms exactly as its items would one at a time, which is what
lets many atlas cells share one optimizer batch without changing any cell's icon. Random values are drawn on the CPU, so a
seed gives the same transforms on every device.

Differences from Lucid, on purpose: every random choice is made per image, not once per batch;
and :func:`random_scale` resamples around the center at a fixed canvas size (Lucid resizes the
whole canvas), so images with different scales still stack into one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from atlas.optvis.param import Generators, per_item_generators
from atlas.optvis.rng import BatchRNG

#: What the transforms draw from: one generator, one per image, or a :class:`BatchRNG`.
RNG = Generators | BatchRNG

__all__ = [
    "ICON_AUGMENTS",
    "Transform",
    "apply",
    "icon_transforms",
    "jitter",
    "pad",
    "random_rotate",
    "random_scale",
    "standard_transforms",
]


class Transform(Protocol):
    """``(images (B, C, H, W), rng) -> images (B, C, H', W')``, differentiable in ``images``."""

    def __call__(self, images: torch.Tensor, rng: RNG) -> torch.Tensor: ...


def apply(transforms: Sequence[Transform], images: torch.Tensor, rng: RNG) -> torch.Tensor:
    """Apply ``transforms`` in order; ``rng`` as in the module docstring."""
    for t in transforms:
        images = t(images, rng)
    return images


def _choices(rng: RNG, batch: int, n: int) -> torch.Tensor:
    """(B,) int64 indices in [0, n) on the CPU: item b drawn from its own stream."""
    if isinstance(rng, BatchRNG):
        if len(rng) != batch:
            raise ValueError(f"got a BatchRNG of {len(rng)} streams for a batch of {batch}")
        return rng.randint(n)
    gens = per_item_generators(rng, batch)
    return torch.cat([torch.randint(n, (1,), generator=g) for g in gens])


class _Pad:
    def __init__(self, w: int, mode: str, value: float):
        if w < 0:
            raise ValueError(f"pad width must be >= 0, got {w}")
        if mode not in ("constant", "reflect", "replicate"):
            raise ValueError(f"pad mode {mode!r} is not one of 'constant', 'reflect', 'replicate'")
        self.w, self.mode, self.value = w, mode, value

    def __call__(self, images: torch.Tensor, rng: RNG) -> torch.Tensor:
        if self.w == 0:
            return images
        if self.mode == "constant":
            return F.pad(images, (self.w,) * 4, mode="constant", value=self.value)
        return F.pad(images, (self.w,) * 4, mode=self.mode)

    def __repr__(self) -> str:
        extra = f", value={self.value}" if self.mode == "constant" else ""
        return f"pad({self.w}, mode={self.mode!r}{extra})"


def pad(w: int, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pad ``w`` pixels on every side (Lucid ``pad``): (B, C, H, W) -> (B, C, H + 2w, W + 2w).

    ``mode`` is ``"constant"`` (filled with ``value``, default mid-gray), ``"reflect"`` or
    ``"replicate"``. Not random; gives the later transforms room so the borders do not dominate.
    """
    return _Pad(w, mode, value)


class _Jitter:
    def __init__(self, d: int):
        if d < 0:
            raise ValueError(f"jitter must be >= 0 pixels, got {d}")
        self.d = d

    def __call__(self, images: torch.Tensor, rng: RNG) -> torch.Tensor:
        if self.d == 0:
            return images
        b, c, h, w = images.shape
        if h <= self.d or w <= self.d:
            raise ValueError(f"jitter({self.d}) needs images larger than {self.d} px, got {h}x{w}; pad first")
        offsets = torch.stack([_choices(rng, b, self.d + 1), _choices(rng, b, self.d + 1)], 1)
        hh, ww = h - self.d, w - self.d
        if bool((offsets == offsets[0]).all()):  # one offset for all: a view
            oy, ox = offsets[0].tolist()
            return images[:, :, oy:oy + hh, ox:ox + ww]
        # One gather over the flattened pixels: item b is cropped at its own offset (faster
        # than advanced indexing or a loop over items, forward and backward).
        offsets = offsets.to(images.device)
        ys = offsets[:, 0, None, None] + torch.arange(hh, device=images.device)[None, :, None]
        xs = offsets[:, 1, None, None] + torch.arange(ww, device=images.device)[None, None, :]
        idx = (ys * w + xs).view(b, 1, hh * ww).expand(b, c, hh * ww)
        return images.flatten(2).gather(2, idx).view(b, c, hh, ww)

    def __repr__(self) -> str:
        return f"jitter({self.d})"


def jitter(d: int) -> Transform:
    """Random crop of (H - d, W - d) at an offset in [0, d] on each axis (Lucid ``jitter``).

    (B, C, H, W) -> (B, C, H - d, W - d); each image gets its own offset.
    """
    return _Jitter(d)


def _affine(images: torch.Tensor, scales: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Resample each image b zoomed by ``scales[b]`` and rotated by ``angles_deg[b]`` about its center.

    Same output size; samples outside the image repeat the border (Lucid's rotate fills black).
    """
    b, _, h, w = images.shape
    a = angles_deg.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(a) / scales, torch.sin(a) / scales
    # affine_grid works in normalized coordinates; the h/w factors keep rotations rigid on non-square images.
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * (h / w)
    theta[:, 1, 0], theta[:, 1, 1] = sin * (w / h), cos
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _RandomScale:
    def __init__(self, scales: Sequence[float]):
        self.scales = [float(s) for s in scales]
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"random_scale needs a non-empty list of positive scales, got {scales!r}")

    def __call__(self, images: torch.Tensor, rng: RNG) -> torch.Tensor:
        idx = _choices(rng, images.shape[0], len(self.scales))
        s = torch.tensor(self.scales, dtype=torch.float32)[idx]
        if bool((s == 1.0).all()):
            return images
        return _affine(images, s, torch.zeros_like(s))

    def __repr__(self) -> str:
        return f"random_scale({len(self.scales)} scales in [{min(self.scales):.3g}, {max(self.scales):.3g}])"


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom each image by a factor drawn uniformly from ``scales`` (Lucid ``random_scale``).

    Repeat a value in the list to weight it. Size-preserving: zooming in crops the border,
    zooming out repeats the border pixels.
    """
    return _RandomScale(scales)


class _RandomRotate:
    def __init__(self, angles: Sequence[float]):
        self.angles = [float(a) for a in angles]
        if not self.angles:
            raise ValueError("random_rotate needs a non-empty list of angles in degrees, e.g. range(-10, 11)")

    def __call__(self, images: torch.Tensor, rng: RNG) -> torch.Tensor:
        idx = _choices(rng, images.shape[0], len(self.angles))
        a = torch.tensor(self.angles, dtype=torch.float32)[idx]
        if bool((a == 0).all()):
            return images
        return _affine(images, torch.ones_like(a), a)

    def __repr__(self) -> str:
        return f"random_rotate({len(self.angles)} angles in [{min(self.angles):g}, {max(self.angles):g}] deg)"


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate each image by an angle in degrees drawn uniformly from ``angles`` (Lucid ``random_rotate``).

    Repeat a value to weight it (Lucid's standard list adds five extra zeros).
    """
    return _RandomRotate(angles)


def standard_transforms() -> list[Transform]:
    """Lucid's ``transform.standard_transforms``: pad 12 (gray), jitter 8, scale 0.9..1.1,
    rotate -10..10 degrees (0 weighted 6x), jitter 4. Net size change: +12 px per side."""
    return [
        pad(12, mode="constant", value=0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]


#: ``augment`` values of :func:`icon_transforms`.
ICON_AUGMENTS = ("standard", "strong")


def icon_transforms(pad_width: int = 16, pad_value: float = 0.5, augment: str = "standard") -> list[Transform]:
    """The transforms of the atlas icons: the paper's icon renderer (``render_icons`` in the
    Activation Atlas notebooks) with a wider, gray pad.

    Pad ``pad_width`` (default 16, mid-gray), jitter 4, 4, 8, 8, 8, a zoom in 0.995**(-5..79)
    and 0.998**(20..39) (twice), a rotation in -20..19, -10..9, -5..4 degrees (0 weighted 5x
    more), jitter 2. The jitters crop 34 px in all, so an 80 px icon reaches the model as 78 px
    with every border in view about half the time. The notebooks pad 2 px (white, with an alpha
    channel we do not have), which leaves the model a 50 px window: the icon's outer 15 px are
    almost never seen and come out pale and soft. With the wider pad the icons fill their frame,
    reach a higher cosine to their direction at the layer's center, and cost about 2.1x more per
    step on a CPU (``benchmarks/README.md``, "Icons side by side with dreamlens").
    ``pad_width=2, pad_value=1.0`` gives the notebooks' transforms back.

    ``augment="strong"``: the stronger transformation robustness that feature visualization of
    vision transformers needs (Ghiasi et al., "What do Vision Transformers Learn? A Visual
    Exploration", 2023, found ViT visualizations fail without much stronger augmentation than
    CNNs get): jitter 8, 8, 16, 16, 16, a zoom in 0.5..1.2 (most of it zooming out), a rotation
    in -30..30 degrees (0 weighted 10x) and jitter 4; 68 px are cropped in all, so an 80 px icon
    with a 24 px pad reaches the model as a 60 px window that wanders over the whole icon.
    The same transforms on a CNN give blurrier icons; it is meant for token layers."""
    if augment not in ICON_AUGMENTS:
        raise ValueError(f"augment must be one of {', '.join(repr(a) for a in ICON_AUGMENTS)}, got {augment!r}")
    if augment == "strong":
        j = 2  # every jitter twice as far
        scales = [0.5 + 0.01 * n for n in range(71)]
        angles = list(range(-30, 31)) + 10 * [0]
    else:
        j = 1
        scales = [0.995**n for n in range(-5, 80)] + [0.998**n for n in 2 * list(range(20, 40))]
        angles = list(range(-20, 20)) + list(range(-10, 10)) + list(range(-5, 5)) + 5 * [0]
    return [
        pad(pad_width, mode="constant", value=pad_value),
        jitter(4 * j),
        jitter(4 * j),
        jitter(8 * j),
        jitter(8 * j),
        jitter(8 * j),
        random_scale(scales),
        random_rotate(angles),
        jitter(2 * j),
    ]
