"""Neural style transfer as optvis objectives (Gatys, Ecker, Bethge, "Image Style Transfer Using
Convolutional Neural Networks", CVPR 2016; Lucid's ``style_transfer`` notebook for InceptionV1).

An image is optimized so that its activations at one layer match a *content* photo's and the
Gram matrices of its activations at several layers match a *style* photo's. Both are
:class:`~atlas.optvis.Objective` values, so they combine with the rest of the algebra and run
through :func:`~atlas.optvis.render_vis` like any feature visualization::

    targets = style_targets(model, style_photo, STYLE_LAYERS)
    obj = content("inception3b", content_acts) + 10 * style(targets)

Objectives are maximized here, so both return the *negative* loss, one value per image (B,):

- ``gram_matrix(F) = F F^T / P`` for activations F (C, P) at P positions: the channels'
  co-activation averaged over positions, so images of different sizes compare directly.
- content: ``-||F - F_c||^2 / ||F_c||^2`` (the feature MSE relative to the content's energy).
- style: ``-sum_l w_l ||G_l - G_s,l||^2 / ||G_s,l||^2`` over the style layers.

Gatys et al. weight the absolute squared errors by ``1 / (4 N^2 M^2)`` and tune ``alpha / beta``
per image; the relative errors used here put every layer and both terms on a scale of about 1
when the image is unrelated, so one ``style_weight`` (default 10) works across photos and layers.

The network is the project's InceptionV1 (BVLC GoogLeNet), not the paper's VGG-19; the default
layers follow Lucid's notebook: content ``mixed3b`` = ``inception3b``; style ``conv2d2`` =
``conv3_relu``, ``mixed3a`` ... ``mixed4c`` = ``inception3a`` ... ``inception4c``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from atlas.models import AtlasModel, capture, resolve_device
from atlas.optvis.dream import read_image, resize_image
from atlas.optvis.objectives import Objective
from atlas.optvis.optimize import evaluate, render_vis, save_png
from atlas.optvis.param import fft_image, pixel_image
from atlas.optvis.transform import Transform

__all__ = [
    "CONTENT_LAYER",
    "STYLE_LAYERS",
    "StyleResult",
    "content",
    "gram_matrix",
    "layer_activations",
    "style",
    "style_targets",
    "style_transfer",
]

log = logging.getLogger(__name__)

#: Lucid's content layer for InceptionV1 (``mixed3b``).
CONTENT_LAYER = "inception3b"
#: Lucid's style layers for InceptionV1 (``conv2d2, mixed3a, mixed3b, mixed4a, mixed4b, mixed4c``).
STYLE_LAYERS = ("conv3_relu", "inception3a", "inception3b", "inception4a", "inception4b", "inception4c")


def gram_matrix(acts: torch.Tensor) -> torch.Tensor:
    """Gram matrices of activations (B, C, H, W) -> (B, C, C): ``G[b] = F_b F_b^T / (H W)``."""
    if acts.dim() != 4:
        raise ValueError(f"gram_matrix needs spatial activations (B, C, H, W), got shape {tuple(acts.shape)}")
    f = acts.flatten(2)
    return torch.einsum("bcp,bdp->bcd", f, f) / f.shape[2]


def _relative_sq_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||x_b - t||^2 / ||t||^2`` per image b of x (B, ...), target (1 or B, ...)."""
    d = (x - target).flatten(1).pow(2).sum(1)
    return d / target.flatten(1).pow(2).sum(1).clamp_min(1e-12)


class _Target:
    """A constant target moved to the activations' device and dtype once."""

    def __init__(self, t: torch.Tensor):
        self.t = t.detach()
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, ref: torch.Tensor) -> torch.Tensor:
        key = (ref.device, ref.dtype)
        if key not in self._cache:
            self._cache[key] = self.t.to(device=ref.device, dtype=ref.dtype)
        return self._cache[key]


def content(layer: str, target: torch.Tensor) -> Objective:
    """Content objective: ``-||F - F_c||^2 / ||F_c||^2`` at ``layer``, F_c = ``target`` (1 or B, C, H, W).

    The image must have the content photo's size (the activations are compared position by position).
    """
    tgt = _Target(target if target.dim() == 4 else target[None])

    def fn(acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = acts[layer]
        t = tgt.like(a)
        if a.shape[1:] != t.shape[1:]:
            raise ValueError(f"content({layer}): the image's activations are {tuple(a.shape[1:])} but the content "
                             f"photo's are {tuple(t.shape[1:])}; optimize an image of the content photo's size")
        return -_relative_sq_error(a, t)

    return Objective(fn, f"content({layer})", [layer])


def style(targets: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None) -> Objective:
    """Style objective: ``-sum_l w_l ||G_l - G_s,l||^2 / ||G_s,l||^2`` over the layers of ``targets``.

    Args:
        targets: layer -> the style photo's Gram matrix (C, C) or (1, C, C), e.g. from
            :func:`style_targets`.
        weights: layer -> w_l; default 1 / (number of layers) each.
    """
    if not targets:
        raise ValueError("style() needs at least one layer's target Gram matrix; build them with style_targets()")
    names = list(targets)
    w = {n: 1.0 / len(names) for n in names} if weights is None else {n: float(weights[n]) for n in names}
    tgts = {n: _Target(t if t.dim() == 3 else t[None]) for n, t in targets.items()}

    def fn(acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for n in names:
            g = gram_matrix(acts[n])
            t = tgts[n].like(g)
            if g.shape[1:] != t.shape[1:]:
                raise ValueError(f"style({n}): Gram matrix {tuple(g.shape[1:])} does not match the target's "
                                 f"{tuple(t.shape[1:])}; compute the targets with the same model")
            term = w[n] * _relative_sq_error(g, t)
            total = term if total is None else total + term
        return -total

    return Objective(fn, f"style({', '.join(names)})", names)


def layer_activations(model: AtlasModel, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` for ``image`` (1, 3, H, W) in [0, 1], detached, on the model's device
    (token layers as their patch grid, as :func:`~atlas.optvis.evaluate` hands them to objectives)."""
    for name in layers:
        model.layer(name)  # unknown layer: error with close matches
    with torch.no_grad(), capture(model, list(layers), detach=True, grid=True) as acts:
        model(image.to(model.device))
    return {n: acts[n] for n in layers}


def style_targets(model: AtlasModel, image: torch.Tensor, layers: Sequence[str] = STYLE_LAYERS
                  ) -> dict[str, torch.Tensor]:
    """The Gram matrices (1, C, C) of a style image (1, 3, H, W) at ``layers``."""
    return {n: gram_matrix(a) for n, a in layer_activations(model, image, layers).items()}


@dataclass
class StyleResult:
    """What :func:`style_transfer` returns.

    Attributes:
        image: (1, 3, H, W) in [0, 1] on the CPU, the content photo's size.
        history: (steps,) the combined objective (negative weighted loss) at each step.
        content_loss: relative content error of the final image (0 = the content photo's features).
        style_loss: weighted relative style error of the final image.
        start_content_loss, start_style_loss: the same for the starting image.
    """

    image: torch.Tensor
    history: torch.Tensor
    content_loss: float
    style_loss: float
    start_content_loss: float
    start_style_loss: float


def style_transfer(
    model: AtlasModel,
    content_image: str | os.PathLike | torch.Tensor,
    style_image: str | os.PathLike | torch.Tensor,
    *,
    out: str | os.PathLike | None = None,
    content_layer: str = CONTENT_LAYER,
    style_layers: Sequence[str] = STYLE_LAYERS,
    style_weight: float = 10.0,
    content_weight: float = 1.0,
    size: int | None = 256,
    steps: int = 200,
    lr: float = 0.05,
    param: str = "fft",
    init: str = "content",
    transforms: Sequence[Transform] = (),
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> StyleResult:
    """Paint ``content_image`` in the style of ``style_image`` (Gatys et al. 2016) through :func:`render_vis`.

    Args:
        content_image, style_image: photo files or (1, 3, H, W) tensors in [0, 1].
        out: write the result here as a PNG.
        content_layer: layer whose activations are kept (default ``inception3b``).
        style_layers: layers whose Gram matrices are matched (default :data:`STYLE_LAYERS`).
        style_weight, content_weight: weights of the two (relative) losses.
        size: shrink both photos so that their longer side is at most this (None: as they are).
        steps, lr: Adam steps and learning rate.
        param: ``"fft"`` (decorrelated FFT, default) or ``"pixel"``.
        init: ``"content"`` (start from the content photo, default) or ``"noise"``.
        transforms: optvis transforms per step; none by default (content is compared position by
            position, so transforms must keep the image's size).
        seed: seed of the random start (``init="noise"``) and of the transforms.
    """
    if param not in ("fft", "pixel"):
        raise ValueError(f"param must be 'fft' or 'pixel', got {param!r}")
    if init not in ("content", "noise"):
        raise ValueError(f"init must be 'content' or 'noise', got {init!r}")
    if not style_layers:
        raise ValueError("give at least one style layer, e.g. style_layers=('inception3a', 'inception4a')")
    if style_weight < 0 or content_weight < 0 or style_weight + content_weight == 0:
        raise ValueError(f"weights must be >= 0 and not both 0, got style_weight={style_weight}, "
                         f"content_weight={content_weight}")
    dev = resolve_device(device)
    if model.device != dev:
        model.to(dev)

    def load(x: str | os.PathLike | torch.Tensor) -> torch.Tensor:
        img = x if isinstance(x, torch.Tensor) else read_image(x, size)
        img = img.reshape(1, 3, *img.shape[-2:]).float()
        if isinstance(x, torch.Tensor) and size is not None and max(img.shape[-2:]) > size:
            s = size / max(img.shape[-2:])
            img = resize_image(img, (round(img.shape[-2] * s), round(img.shape[-1] * s)))
        return img.to(dev)

    c_img, s_img = load(content_image), load(style_image)
    c_obj = content(content_layer, layer_activations(model, c_img, [content_layer])[content_layer])
    s_obj = style(style_targets(model, s_img, style_layers))
    objective = content_weight * c_obj + style_weight * s_obj
    g = torch.Generator().manual_seed(seed)
    hw = (int(c_img.shape[2]), int(c_img.shape[3]))
    start = c_img if init == "content" else None
    p = (fft_image if param == "fft" else pixel_image)(hw, generator=g, device=dev, init=start)
    log.info("style transfer %dx%d: %s, %d steps", *hw, objective, steps)
    with torch.no_grad():
        first = p()
        c0, s0 = -float(evaluate(model, c_obj, first)), -float(evaluate(model, s_obj, first))
    r = render_vis(model, objective, p, list(transforms), steps=steps, lr=lr, generator=g, device=dev,
                   progress=progress, redirect_relu_steps=0)
    with torch.no_grad():
        final = r.images.to(dev)
        c1, s1 = -float(evaluate(model, c_obj, final)), -float(evaluate(model, s_obj, final))
    if out is not None:
        save_png(r.images, out)
    return StyleResult(image=r.images, history=r.history[:, 0], content_loss=c1, style_loss=s1,
                       start_content_loss=c0, start_style_loss=s0)
