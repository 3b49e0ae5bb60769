"""The optimization loop of feature visualization (Lucid ``render.render_vis``), and image helpers.

Each step: the parameterization produces images (B, 3, H, W) in [0, 1]; the transforms jitter,
scale and rotate them; the model runs with forward hooks on exactly the layers the objective
names; the optimizer takes a step that increases the sum of the per-image objective values.
The images the model sees are as large as the parameterization after the transforms (Lucid
does not resize either); pass ``input_size`` to resample them to a fixed size first.

Lucid's loop, with these choices made explicit:

- Redirected ReLU gradients for the first 16 steps (Lucid's ``relu_gradient_override``), so
  units that are dead on the gray start still move (:mod:`atlas.optvis.relu`).
- Every image has its own random stream for the transforms (:class:`~atlas.optvis.rng.BatchRNG`
  keys drawn from its generator), and nothing couples the images of a batch unless the
  objective does (e.g. :func:`~atlas.optvis.diversity`): a batch renders like its images alone.
- When the objective does not read the logits, the forward pass stops right after the last
  hooked layer has run, so the layers above it cost nothing (about half the time of a step
  for ``inception4c``).
- On the CPU the model gets channels-last tensors (faster oneDNN convolutions and pooling).
- ``precision="bf16"``/``"fp16"`` runs the model's passes of the optimization steps under
  ``torch.autocast`` (:mod:`atlas.runtime.precision`); the parameterization, the optimizer and the
  final measured objective stay float32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from atlas.models import AtlasModel, capture, resolve_device
from atlas.optvis.objectives import LOGITS, Objective
from atlas.optvis.param import Generators, fft_image, per_item_generators
from atlas.optvis.relu import redirected_relu
from atlas.optvis.rng import BatchRNG
from atlas.optvis.transform import Transform, apply, standard_transforms
from atlas.runtime.precision import autocast, check_precision

__all__ = ["VisResult", "evaluate", "render_vis", "save_png", "to_uint8"]

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def evaluate(model: AtlasModel, objective: Objective, images: torch.Tensor, *,
             redirect_relu: bool = False) -> torch.Tensor:
    """The objective's per-image values (B,) for ``images`` (B, 3, H, W) in [0, 1].

    Hooks only ``objective.layers`` (removed on exit, also on error) and keeps the graph, so
    the result can be backpropagated; wrap in ``torch.no_grad()`` to only measure.
    ``redirect_relu``: backpropagate Lucid's redirected ReLU gradient (:mod:`atlas.optvis.relu`).

    This is where objectives get their activations, and so the one place a vision transformer's
    token layer (B, T, C) becomes what every objective reads: its patch tokens on the patch grid,
    (B, C, H, W) (:func:`atlas.models.capture` with ``grid=True``; the class token is not read).
    """
    layers = [name for name in objective.layers if name != LOGITS]
    needs_logits = LOGITS in objective.layers
    out = None
    # without the logits, the forward pass stops once every hooked layer has run
    with capture(model, layers, stop=not needs_logits, grid=True) as acts:
        with redirected_relu(redirect_relu):
            out = model(images)
    found = dict(acts)
    if needs_logits:
        found[LOGITS] = out
    return objective(found)


@dataclass
class VisResult:
    """What :func:`render_vis` returns.

    Attributes:
        images: (B, 3, H, W) float in [0, 1] on the CPU, the final images.
        values: (B,) objective of the final images, measured without random transforms.
        history: (steps, B) objective at each step (on the transformed images).
        snapshots: step -> images (B, 3, H, W) at the requested ``thresholds``.
    """

    images: torch.Tensor
    values: torch.Tensor
    history: torch.Tensor
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


def render_vis(
    model: AtlasModel,
    objective: Objective,
    param: nn.Module | None = None,
    transforms: Sequence[Transform] | None = None,
    *,
    steps: int = 256,
    lr: float = 0.05,
    optimizer: OptimizerFactory | None = None,
    generator: Generators | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    thresholds: Sequence[int] = (),
    input_size: int | None = None,
    channels_last: bool | None = None,
    redirect_relu_steps: int = 16,
    precision: str = "fp32",
    penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
    penalty_weight: float = 0.0,
) -> VisResult:
    """Optimize images to maximize ``objective`` (Lucid ``render.render_vis``).

    Args:
        model: an :class:`~atlas.models.AtlasModel` (RGB in [0, 1]; parameters frozen).
        objective: what to maximize; its per-image values are summed for the gradient.
        param: the parameterization (contract in :mod:`atlas.optvis.param`); default
            ``fft_image(128, B, generator=generator, device=device)``, B = 1 or the number of
            generators.
        transforms: list of transforms (:mod:`atlas.optvis.transform`); default
            :func:`~atlas.optvis.transform.standard_transforms`; ``[]`` for none.
        steps: optimizer steps (default 256; Lucid's default threshold is 512).
        lr: learning rate of the default Adam optimizer (Lucid: 0.05).
        optimizer: ``params -> torch.optim.Optimizer``; default ``Adam(params, lr=lr)``.
        generator: drives the random start (when ``param`` is None) and the transforms: one
            ``torch.Generator`` or one per image (then image b depends only on generator b). Each
            image's transform stream is a :class:`~atlas.optvis.rng.BatchRNG` key drawn from its
            generator at the start. Default: a new generator seeded with 0, so repeated calls give
            the same images.
        device: where to optimize; default the model's device; ``"auto"`` picks CUDA when present.
            The model must already be there.
        progress: show a tqdm bar with the mean objective.
        thresholds: steps after which to keep a copy of the images (``VisResult.snapshots``).
        input_size: resample the transformed images to ``input_size`` x ``input_size`` before
            the model (None: feed them as they are, as Lucid does).
        channels_last: hand the model channels-last (NHWC) tensors; default: on the CPU only,
            where oneDNN's convolutions and max-pooling run about 1.3x faster that way. Does not
            change the model.
        redirect_relu_steps: for this many first steps, ReLUs pass Lucid's redirected gradient so
            that units dead on the gray start can still be maximized (Lucid's
            ``relu_gradient_override``, 16 steps); 0 turns it off.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the model's passes of the
            steps under ``torch.autocast``; ``values`` are measured in float32 either way.
        penalty: an image prior, ``images (B, 3, H, W) -> (B,)`` penalties (e.g.
            :func:`atlas.optvis.priors.border_penalty`), taken on the untransformed images.
        penalty_weight: its weight *relative to the objective*: each step maximizes
            ``value - penalty_weight * |value| * penalty`` per image (``|value|`` held constant),
            so one weight means the same whatever the objective's scale. ``values`` and
            ``history`` report the objective alone.

    Returns:
        a :class:`VisResult` with images (B, 3, H, W) in [0, 1] on the CPU.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    check_precision(precision)
    dev = model.device if device is None else resolve_device(device)
    if model.device != dev:
        raise ValueError(f"the model is on {model.device} but device={dev}; move it first with model.to({str(dev)!r})")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if param is None:
        n = 1 if isinstance(generator, torch.Generator) else len(generator)
        param = fft_image(128, n, generator=generator, device=dev)
    if transforms is None:
        transforms = standard_transforms()
    params = [p for p in param.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the parameterization has no trainable parameters; "
                         "build it with fft_image(...) or pixel_image(...)")
    if any(p.device != dev for p in params):
        raise ValueError(f"the parameterization is not on {dev}; build it with device={str(dev)!r}")
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)
    batch = getattr(param, "batch", None)
    if batch is None:
        with torch.no_grad():
            batch = param().shape[0]
    # one stream per image (keys drawn after the parameterization's own draws), vectorized
    rng = BatchRNG.from_generators(per_item_generators(generator, batch))
    wanted = set(int(t) for t in thresholds)

    nhwc = dev.type == "cpu" if channels_last is None else channels_last

    def model_input(images: torch.Tensor) -> torch.Tensor:
        if input_size is not None and tuple(images.shape[2:]) != (input_size, input_size):
            images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
        return images.contiguous(memory_format=torch.channels_last) if nhwc else images

    history: list[torch.Tensor] = []
    snapshots: dict[int, torch.Tensor] = {}
    bar = tqdm(range(1, steps + 1), desc=f"render {objective}"[:60], unit="step", disable=not progress, leave=False)
    for step in bar:
        opt.zero_grad(set_to_none=True)
        images = param()
        with autocast(precision, dev):
            values = evaluate(model, objective, model_input(apply(transforms, images, rng)),
                              redirect_relu=step <= redirect_relu_steps).float()
        loss = -values.sum()
        if penalty is not None and penalty_weight:
            loss = loss + (penalty_weight * values.detach().abs() * penalty(images).float()).sum()
        loss.backward()
        opt.step()
        history.append(values.detach())
        if step in wanted:
            with torch.no_grad():
                snapshots[step] = param().detach().cpu()
        if progress and (step % 8 == 0 or step == steps):
            bar.set_postfix(objective=f"{values.detach().mean().item():.4g}")
    with torch.no_grad():
        images = param().detach()
        final = evaluate(model, objective, model_input(images)).detach()
    hist = torch.stack(history).cpu() if history else torch.zeros(0, images.shape[0])
    log.debug("render_vis %s: %d steps, final objective %s", objective, steps, final.tolist())
    return VisResult(images=images.cpu(), values=final.cpu(), history=hist, snapshots=snapshots)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) floats in [0, 1] -> (B, H, W, 3) or (H, W, 3) uint8 (rounded)."""
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"expected RGB images (B, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return x.movedim(-3, -1).numpy()


def save_png(images: torch.Tensor | np.ndarray, path: str | os.PathLike, *, ncols: int | None = None,
             gap: int = 2) -> Path:
    """Save one image or a batch (tiled left to right, ``ncols`` per row, default all) as a PNG.

    ``images``: torch (B, 3, H, W) / (3, H, W) floats in [0, 1], or numpy uint8 (B, H, W, 3) /
    (H, W, 3). Tiles are separated by ``gap`` white pixels. Returns the path.
    """
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (..., H, W, 3), got {arr.dtype} {arr.shape}")
    if arr.ndim == 3:
        arr = arr[None]
    b, h, w, _ = arr.shape
    ncols = min(ncols or b, b)
    nrows = -(-b // ncols)
    canvas = np.full((nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, ncols)
        canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = arr[i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path
