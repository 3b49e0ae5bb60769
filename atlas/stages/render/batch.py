"""One batch of a render, a pure description (:class:`IconBatch`), rendered in this process or as a
Dask task alike (:func:`render_icon_batch`); and the network under ``torch.compile``."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.optvis import Objective, evaluate, to_uint8
from atlas.optvis.transform import Transform
from atlas.stages.render.directions import REDIRECT_RELU_STEPS, cell_generator, render_directions
from atlas.stages.render.settings import RenderSettings, reads_mean

log = logging.getLogger(__name__)


def _icon_cossim(model: AtlasModel, layer: str, images: torch.Tensor, vecs: np.ndarray,
                 spatial_mean: bool = False) -> np.ndarray:
    """Cosine between each image's activation in ``layer`` (at the center, or with
    ``spatial_mean`` averaged over positions, as the icon objective reads it) and its direction, (B,)."""
    v = torch.as_tensor(vecs, dtype=torch.float32)

    def cos(acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = acts[layer]
        if a.dim() == 4:
            a = a.mean(dim=(2, 3)) if spatial_mean else a[:, :, a.shape[2] // 2, a.shape[3] // 2]
        return torch.nn.functional.cosine_similarity(a, v.to(a.device, a.dtype), dim=1, eps=1e-8)

    with torch.no_grad():
        return evaluate(model, Objective(cos, "icon cosine", [layer]), images.to(model.device)).cpu().numpy()


@dataclass(frozen=True)
class IconBatch:
    """One batch of a render: rows ``rows`` of level ``size``, everything needed to render them.

    A pure description (picklable, a Dask task's argument): the icons are a function of it, the
    model, the device and the thread count.

    Attributes:
        size: grid size of the level; rows: (B,) ascending rows of the level; cell_id: (B,) their
        cell ids (they seed :func:`cell_generator`); directions: (B, C) float32; init: the
        icons the cells start from (None: noise).
    """

    layer: str
    size: int
    rows: np.ndarray
    cell_id: np.ndarray
    directions: np.ndarray
    icon_size: int = RenderSettings.icon_size
    steps: int = RenderSettings.steps
    attempts: int = RenderSettings.attempts
    lr: float = RenderSettings.lr
    cossim_pow: float = RenderSettings.cossim_pow
    seed: int = RenderSettings.seed
    whiten: np.ndarray | None = None
    transforms: tuple[Transform, ...] | None = None
    precision: str = RenderSettings.precision
    border_prior: float = RenderSettings.border_prior
    objective: str = RenderSettings.objective
    #: (B, S, S, 3) uint8 start images (the parent cells' icons), or None to start from noise
    init: np.ndarray | None = None
    redirect_relu_steps: int = REDIRECT_RELU_STEPS


@dataclass
class IconBatchResult:
    """The rendered batch: icons (B, S, S, 3) uint8, objective (B,), cossim (B,), and who rendered it."""

    size: int
    rows: np.ndarray
    icons: np.ndarray
    objective: np.ndarray
    cossim: np.ndarray
    seconds: float = 0.0
    worker: str = ""


def render_icon_batch(model: AtlasModel, batch: IconBatch) -> IconBatchResult:
    """Render one :class:`IconBatch` on the model's device (in-process and as a Dask task alike)."""
    t0 = time.perf_counter()
    gens = [[cell_generator(batch.seed, batch.size, int(c), a) for c in batch.cell_id] for a in range(batch.attempts)]
    init = None if batch.init is None else torch.from_numpy(batch.init).permute(0, 3, 1, 2).float() / 255
    images, values = render_directions(model, batch.layer, batch.directions, gens, icon_size=batch.icon_size,
                                       steps=batch.steps, lr=batch.lr, cossim_pow=batch.cossim_pow,
                                       whiten=batch.whiten, transforms=batch.transforms, device=model.device,
                                       precision=batch.precision, border_prior=batch.border_prior,
                                       objective=batch.objective, init=init,
                                       redirect_relu_steps=batch.redirect_relu_steps)
    cos = _icon_cossim(model, batch.layer, images, batch.directions, reads_mean(batch.objective))
    return IconBatchResult(batch.size, batch.rows, to_uint8(images), values.float().numpy(), cos,
                           time.perf_counter() - t0, f"pid {os.getpid()}")


def compile_model(model: AtlasModel, layer: str, *, icon_size: int = RenderSettings.icon_size,
                  backend: str = "inductor") -> AtlasModel:
    """A copy of ``model`` whose network runs under ``torch.compile(backend=backend)``, checked by
    one forward and backward pass of two ``icon_size`` images to ``layer``; when compiling or that
    pass fails, a WARNING says why and ``model`` itself is returned (the render goes on without it).
    """
    try:
        compiled = copy.deepcopy(model)
        compiled.net.compile(backend=backend)
        x = torch.rand(2, 3, icon_size, icon_size, device=model.device, requires_grad=True)
        probe = Objective(lambda acts: acts[layer].float().flatten(1).mean(1), "compile probe", [layer])
        evaluate(compiled, probe, x).sum().backward()
    except Exception as e:  # noqa: BLE001 -- any compiler failure means: render without it
        log.warning("torch.compile(backend=%r) failed (%s: %s); rendering without it", backend, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
        return model
    log.info("rendering with torch.compile(backend=%r)", backend)
    return compiled

