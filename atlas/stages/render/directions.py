"""What an icon is optimized toward and from: the direction objective's render
(:func:`render_directions`), each cell's random generator, and the whitening of directions."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.optvis import directions, fft_image, render_vis
from atlas.optvis.objectives import whitening_from_covariance
from atlas.optvis.priors import border_penalty
from atlas.optvis.transform import Transform
from atlas.stages.render.settings import RenderSettings, icon_view_transforms, reads_mean
from atlas.store.activations import ActivationsFile

#: Steps with Lucid's redirected ReLU gradient at the start of a render from noise (a start from
#: an icon, which has no dead units to revive, takes none).
REDIRECT_RELU_STEPS = 16

def cell_generator(seed: int, size: int, cell_id: int, attempt: int = 0) -> torch.Generator:
    """The CPU generator of one cell's render: seeded from ``(seed, size, cell_id, attempt)``."""
    state = np.random.SeedSequence([int(seed), int(size), int(cell_id), int(attempt)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def render_directions(
    model: AtlasModel,
    layer: str,
    vecs: np.ndarray | torch.Tensor,
    generators: Sequence[Sequence[torch.Generator]],
    *,
    icon_size: int = RenderSettings.icon_size,
    steps: int = RenderSettings.steps,
    lr: float = RenderSettings.lr,
    cossim_pow: float = RenderSettings.cossim_pow,
    whiten: np.ndarray | None = None,
    transforms: Sequence[Transform] | None = None,
    device: torch.device | None = None,
    precision: str = RenderSettings.precision,
    input_size: int | None = None,
    border_prior: float = RenderSettings.border_prior,
    objective: str = RenderSettings.objective,
    init: torch.Tensor | None = None,
    redirect_relu_steps: int = REDIRECT_RELU_STEPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one icon per direction, best of ``len(generators)`` attempts, in one batch per attempt.

    Args:
        vecs: (B, C) directions in ``layer``.
        generators: per attempt, B generators (one per direction): the random start (unless
            ``init``) and the transforms.
        transforms: default: those of the default ``icon_view`` (:func:`~atlas.stages.render.icon_view_transforms`).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the steps (see :func:`render_vis`).
        border_prior: weight of :func:`atlas.optvis.priors.border_penalty` relative to the
            objective (0: none).
        objective: ``"mean"`` or ``"center"``, where the direction objective reads the layer
            (see :class:`~atlas.stages.render.RenderSettings`).
        init: optional start images (B, 3, S, S) in [0, 1] instead of noise (a warm start, e.g.
            the parent cells' icons: :func:`~atlas.stages.render.render_cells` with ``start="parent"``).
        redirect_relu_steps: steps with Lucid's redirected ReLU gradient at the start (see
            :func:`atlas.optvis.render_vis`; a warm start has no dead units to revive).

    Returns:
        icons (B, 3, S, S) in [0, 1] on the CPU, and their objective values (B,) (float32).
    """
    vecs_t = torch.as_tensor(np.asarray(vecs, np.float32))
    dev = device if device is not None else model.device
    obj = directions(layer, vecs_t, cossim_pow=cossim_pow, whiten=whiten, spatial_mean=reads_mean(objective))
    transforms = icon_view_transforms(RenderSettings.icon_view) if transforms is None else transforms
    best_img: torch.Tensor | None = None
    best_val: torch.Tensor | None = None
    for gens in generators:
        param = fft_image(icon_size, len(vecs_t), generator=gens, device=dev, init=init)
        res = render_vis(model, obj, param, transforms, steps=steps, lr=lr, generator=gens, device=dev,
                         precision=precision, input_size=input_size, redirect_relu_steps=redirect_relu_steps,
                         penalty=border_penalty if border_prior else None, penalty_weight=border_prior)
        if best_img is None or best_val is None:
            best_img, best_val = res.images, res.values
        else:
            better = res.values > best_val
            best_img = torch.where(better[:, None, None, None], res.images, best_img)
            best_val = torch.where(better, res.values, best_val)
    if best_img is None or best_val is None:
        raise ValueError("generators must hold at least one attempt (a list of B generators)")
    return best_img, best_val



def whitening_from_activations(path: str | os.PathLike, layer: str | None = None, *, eps: float = 1e-4,
                               chunk_rows: int = 65536) -> np.ndarray:
    """The Activation Atlas whitening ``S = inv(A^T A / N + ridge)``, (C, C) float32, over every row
    of ``layer`` in ``activations.h5`` (streamed in chunks; memory is one chunk plus C x C)."""
    with ActivationsFile(path) as acts:
        layer = acts.layer(layer)
        c = acts.spec(layer).channels
        gram = np.zeros((c, c), np.float64)
        n = 0
        for _, rows in acts.iter_chunks(layer, "activations", chunk_rows):
            r = rows.astype(np.float32)
            gram += r.T @ r
            n += len(r)
    if n < 2:
        raise ValueError(f"{path} has {n} rows of {layer}; collect more activations before whitening")
    return whitening_from_covariance(gram / n, eps)

