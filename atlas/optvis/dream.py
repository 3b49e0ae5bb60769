"""DeepDream: amplify what a layer (or one channel) sees in a photo, octave by octave.

Mordvintsev, Olah, Tyka, "Inceptionism: Going Deeper into Neural Networks" (Google Research
blog, 2015) and their ``deepdream.ipynb``. The algorithm, as there:

1. Octaves: the photo at ``octaves`` sizes, each ``octave_scale`` times smaller than the one
   above (:func:`octave_sizes`); the smallest is processed first.
2. At each octave the image is the photo at that size plus the *detail* dreamed so far
   (upsampled from the octave below; zero at the smallest). ``steps`` gradient-ascent steps:
   the image is rolled by a random offset in ``[-jitter, jitter]`` on each axis (the gradient
   flows back through the roll, which un-rolls it), the objective's gradient is taken, and the
   parameters move by ``lr * g / mean(|g|)`` (the normalized-gradient step).
3. After the octave, ``detail = image - photo at that size``, carried up to the next octave.

The objective is any :class:`~atlas.optvis.Objective`; the original's ``objective_L2`` (maximize
the squared activations of a layer) is :func:`~atlas.optvis.layer`, a single channel is
:func:`~atlas.optvis.channel`. Because steps are normalized, the objective's scale does not matter.

The image is held by an optvis parameterization (contract in :mod:`atlas.optvis.param`)
initialised from the photo at each octave: ``"pixel"`` (one value per pixel, behind a sigmoid,
the closest to the original's pixel-space ascent), ``"decorrelated"`` (the same with Lucid's
decorrelated color, so a step moves luminance and color separately) or ``"fft"`` (the
decorrelated FFT spectrum, which favours smooth, low-frequency changes). Jitter offsets are drawn
from an explicit ``torch.Generator``: a seed gives the same dream.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from atlas.models import AtlasModel, resolve_device
from atlas.optvis import objectives as obj
from atlas.optvis.objectives import Objective
from atlas.optvis.optimize import evaluate
from atlas.optvis.param import ImageParam, fft_image, pixel_image

__all__ = ["DREAM_PARAMS", "DreamResult", "deep_dream", "dream", "octave_sizes", "read_image", "resize_image"]

log = logging.getLogger(__name__)

#: Parameterizations :func:`deep_dream` can start from a photo.
DREAM_PARAMS = ("pixel", "decorrelated", "fft")

#: Default step size per parameterization: the mean absolute change of the parameters per step.
#: ``pixel`` and ``decorrelated`` live in logit space, where 0.02 is about 1.3/255 of a mid-gray
#: pixel (the original's 1.5 on the 0-255 scale).
DEFAULT_LR = {"pixel": 0.02, "decorrelated": 0.02, "fft": 0.02}

_MIN_SIDE = 16


def read_image(path: str | os.PathLike, max_side: int | None = None) -> torch.Tensor:
    """A photo file -> (1, 3, H, W) float in [0, 1] at its own size (or shrunk so that its longer
    side is ``max_side``, keeping the aspect); a clear error for missing or broken files."""
    from atlas.data import open_photo

    img = open_photo(path)
    if max_side is not None:
        if max_side < _MIN_SIDE:
            raise ValueError(f"max_side must be at least {_MIN_SIDE} px, got {max_side}")
        w, h = img.size
        if max(w, h) > max_side:
            s = max_side / max(w, h)
            img = img.resize((max(1, round(w * s)), max(1, round(h * s))), 2)  # PIL.Image.BILINEAR
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.size[1], img.size[0], 3)
    return t.permute(2, 0, 1).float().div(255.0)[None]


def resize_image(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, h, w), bilinear (antialiased when shrinking)."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[2] or size[1] < images.shape[3]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def octave_sizes(size: tuple[int, int], octaves: int, octave_scale: float) -> list[tuple[int, int]]:
    """The (H, W) of each octave, smallest first: octave ``i`` (0 = full size) is
    ``round(H / octave_scale ** i), round(W / octave_scale ** i)``; the last entry is ``size``.

    Raises ``ValueError`` when the smallest octave would be under 16 px on a side.
    """
    h, w = int(size[0]), int(size[1])
    if octaves < 1:
        raise ValueError(f"octaves must be >= 1, got {octaves}")
    if octave_scale < 1.0:
        raise ValueError(f"octave_scale must be >= 1 (each octave that much smaller), got {octave_scale}")
    sizes = [(max(1, round(h / octave_scale**i)), max(1, round(w / octave_scale**i))) for i in range(octaves)]
    if min(sizes[-1]) < _MIN_SIDE:
        raise ValueError(f"the smallest of {octaves} octaves (scale {octave_scale}) of a {h}x{w} image would be "
                         f"{sizes[-1][0]}x{sizes[-1][1]} px; use fewer octaves or a smaller octave scale")
    return sizes[::-1]


@dataclass
class DreamResult:
    """What :func:`deep_dream` returns.

    Attributes:
        image: (1, 3, H, W) in [0, 1] on the CPU, the photo's size.
        octave_sizes: (H, W) of each octave, smallest first.
        history: per octave, (steps,) objective values (on the rolled images) at each step.
        start_values: per octave, the objective of the octave's starting image (no roll).
        end_values: per octave, the objective of the octave's final image (no roll).
    """

    image: torch.Tensor
    octave_sizes: list[tuple[int, int]]
    history: list[torch.Tensor] = field(default_factory=list)
    start_values: list[float] = field(default_factory=list)
    end_values: list[float] = field(default_factory=list)


def _make_param(kind: str, init: torch.Tensor, device: torch.device) -> ImageParam:
    size = (int(init.shape[2]), int(init.shape[3]))
    if kind == "fft":
        return fft_image(size, init=init, device=device)
    return pixel_image(size, init=init, decorrelate=kind == "decorrelated", device=device)


def _roll_offsets(jitter: int, generator: torch.Generator) -> tuple[int, int]:
    if jitter == 0:
        return 0, 0
    oy, ox = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
    return int(oy), int(ox)


def deep_dream(
    model: AtlasModel,
    photo: torch.Tensor,
    objective: Objective,
    *,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    jitter: int = 32,
    lr: float | None = None,
    param: str = "pixel",
    generator: torch.Generator | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> DreamResult:
    """DeepDream ``photo`` (1, 3, H, W) in [0, 1] by gradient ascent on ``objective`` (module docstring).

    Args:
        model: the model (on the device to dream on; parameters frozen).
        photo: the start image, (1, 3, H, W) or (3, H, W) in [0, 1].
        objective: what to amplify, e.g. ``optvis.layer("inception4c")`` or ``optvis.channel(...)``.
        octaves: number of scales (default 4, as the original).
        octave_scale: size ratio between neighbouring octaves (default 1.4, as the original).
        steps: gradient steps per octave (default 10, as the original).
        jitter: largest roll in pixels on each axis per step (default 32, as the original).
        lr: step size, the mean absolute parameter change per step; default :data:`DEFAULT_LR`.
        param: ``"pixel"`` (default), ``"decorrelated"`` or ``"fft"``.
        generator: draws the rolls; default ``torch.Generator().manual_seed(0)``.
        callback: called as ``callback(octave, image (1, 3, h, w))`` after each octave.

    Returns:
        a :class:`DreamResult`; ``image`` has the photo's size.
    """
    if param not in DREAM_PARAMS:
        raise ValueError(f"param must be one of {', '.join(DREAM_PARAMS)}, got {param!r}")
    if photo.dim() == 3:
        photo = photo[None]
    if photo.dim() != 4 or photo.shape[:2] != (1, 3):
        raise ValueError(f"photo must be one RGB image (1, 3, H, W) in [0, 1], got shape {tuple(photo.shape)}")
    if steps < 0 or jitter < 0:
        raise ValueError(f"steps and jitter must be >= 0, got steps={steps}, jitter={jitter}")
    step_size = DEFAULT_LR[param] if lr is None else float(lr)
    if step_size <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    gen = torch.Generator().manual_seed(0) if generator is None else generator
    dev = model.device
    photo = photo.detach().float().clamp(0, 1).to(dev)
    sizes = octave_sizes(tuple(photo.shape[2:]), octaves, octave_scale)
    result = DreamResult(image=photo.cpu(), octave_sizes=sizes)
    detail = torch.zeros(1, 3, *sizes[0], device=dev)
    bar = tqdm(total=len(sizes) * steps, desc=f"dream {objective}"[:60], unit="step", disable=not progress,
               leave=False)
    image = photo
    for o, size in enumerate(sizes):
        base = resize_image(photo, size)
        start = (base + resize_image(detail, size)).clamp(0, 1)
        p = _make_param(param, start, dev)
        params = [t for t in p.parameters() if t.requires_grad]
        hist = []
        for _ in range(steps):
            oy, ox = _roll_offsets(min(jitter, size[0] - 1, size[1] - 1), gen)
            images = p()
            values = evaluate(model, objective, torch.roll(images, shifts=(oy, ox), dims=(2, 3)))
            grads = torch.autograd.grad(values.sum(), params)
            with torch.no_grad():
                for t, g in zip(params, grads):
                    t.add_(g, alpha=step_size / (float(g.abs().mean()) + 1e-8))
            hist.append(float(values.detach().sum()))
            bar.update(1)
        with torch.no_grad():
            image = p().detach()
            result.start_values.append(float(evaluate(model, objective, start).sum()))
            result.end_values.append(float(evaluate(model, objective, image).sum()))
        result.history.append(torch.tensor(hist))
        detail = image - base
        log.debug("octave %d (%dx%d): objective %.4g -> %.4g", o, *size, result.start_values[-1],
                  result.end_values[-1])
        if callback is not None:
            callback(o, image.cpu())
    bar.close()
    result.image = image.cpu()
    return result


def dream(
    model: AtlasModel,
    photo: str | os.PathLike | torch.Tensor,
    layer: str = "inception4c",
    *,
    channel: int | None = None,
    out: str | os.PathLike | None = None,
    max_side: int | None = None,
    octaves: int = 4,
    octave_scale: float = 1.4,
    steps: int = 10,
    jitter: int = 32,
    lr: float | None = None,
    param: str = "pixel",
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> DreamResult:
    """DeepDream a photo at ``layer`` (squared activations) or at one ``channel`` of it; what
    ``atlas dream`` runs. Arguments as in :func:`deep_dream`, plus:

    Args:
        photo: a photo file or a (1, 3, H, W) tensor in [0, 1].
        layer: the layer whose activations are amplified (checked against the model's layers).
        channel: amplify only this channel's mean activation (:func:`~atlas.optvis.channel`).
        out: write the dreamed image here as a PNG (the photo's size).
        max_side: shrink the photo first so that its longer side is at most this (CPU time grows
            with the pixel count).
        seed: seed of the jitter generator.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ...
    """
    model.layer(layer)  # an unknown layer: error with close matches
    dev = resolve_device(device)
    if model.device != dev:
        model.to(dev)
    img = photo if isinstance(photo, torch.Tensor) else read_image(photo, max_side)
    if isinstance(photo, torch.Tensor) and max_side is not None and max(img.shape[-2:]) > max_side:
        s = max_side / max(img.shape[-2:])
        img = resize_image(img.reshape(1, 3, *img.shape[-2:]), (round(img.shape[-2] * s), round(img.shape[-1] * s)))
    objective = obj.layer(layer) if channel is None else obj.channel(layer, int(channel))
    log.info("dreaming %s on a %dx%d photo: %d octaves x %d steps", objective, img.shape[-2], img.shape[-1],
             octaves, steps)
    result = deep_dream(model, img, objective, octaves=octaves, octave_scale=octave_scale, steps=steps,
                        jitter=jitter, lr=lr, param=param, generator=torch.Generator().manual_seed(seed),
                        progress=progress)
    if out is not None:
        from atlas.optvis.optimize import save_png

        save_png(result.image, out)
    return result
