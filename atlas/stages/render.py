"""The render stage: a feature-visualization icon for every atlas cell (``cells.h5`` -> ``icons.h5``).

Carter et al., "Activation Atlas" (Distill 2019): each cell's icon is an image optimized so
that the layer's activation (by default averaged over the icon's positions; the paper
notebooks: at the center, ``objective="center"``) points along the cell's mean activation
vector, using the objective ``dot * max(cos, 0.1) ** cossim_pow``
(:func:`atlas.optvis.directions`, the notebooks' ``direction_neuron_cossim_S``), an FFT
parameterization with decorrelated color and the transforms of the paper's icon renderer
(:func:`atlas.optvis.icon_transforms`).

Batching: ``batch_size`` cells of one level are optimized together, one image per cell, each
with its own direction. Each image draws its random start and transforms from its own
generator, seeded from ``(seed, grid size, cell id, attempt)``, and images do not interact in
the model, so in exact arithmetic a cell's icon would not depend on the other cells of its
batch. In float arithmetic it does: a batched convolution rounds differently from a single one
(differences of 1e-7 after a few steps), and Adam, which divides by the gradient's running
magnitude, amplifies them over hundreds of steps into a visibly different (equally good)
icon -- measured on InceptionV1: batch sizes 1 and 3 give the same icons to 2e-7 after 4
steps, but differ by 16 levels of 255 on average after 128 steps. What holds:

- same settings, batch size, device and thread count -> the same icons, bit for bit;
- a resumed render equals an uninterrupted one bit for bit: batches are a fixed partition of
  each level's rows (rows ``[k * batch_size, (k + 1) * batch_size)``) and written whole;
- another batch size (or a GPU instead of a CPU) gives other samples of the same objective,
  with the same starts and transform streams. Batch size and device are therefore not part
  of the settings hash: a file is resumed with whatever batch size the rerun uses.

Best of k (``attempts``): each cell is rendered ``attempts`` times with different seeds and the
attempt with the highest objective on the final (untransformed) icon is kept, as in the
notebooks' ``render_icons``.

Starting from the parent (``start="parent"``, an option): the levels are rendered coarse to
fine; the coarsest from noise with ``steps`` steps, and every cell of a finer level from its parent
cell's icon as stored in ``icons.h5`` (:func:`parent_rows`), refined with ``refine_steps`` steps at
``refine_lr``. A finer cell's direction is close to its parent's, so a few steps suffice: on 64
real cells of each level of a 196,000-row atlas, 16 steps at half the icons' rate kept the cosine
at 224 px within 0.01 of a 128-step cold render and the sharpness above it, at about 8x its speed
per icon (``benchmarks/README.md``, "Every zoom level"). But the icons of a region then share
their ancestor's picture, refined: in the viewer, all the grid-80 cells under one grid-20 cell
show one picture, where cold icons draw a new one per cell. That is why ``"cold"`` stays the
default. Because a cell starts from the 8-bit icon on disk, a resumed render equals an
uninterrupted one as before.

Resuming: icons are written after every batch (layout and crash safety in
:mod:`atlas.store.icons`); a rerun with the same settings renders only the cells not done yet,
and a complete file is left alone. Levels are kept by their cells: a grid level added later
(or one left out with ``levels``) is added to the file, a level whose cells changed is
rendered again, and the others keep their icons. Other render settings are refused
(:class:`~atlas.store.common.SettingsChangedError`) unless ``overwrite``.

Size: an 80 px icon reaches the model as 78 px after the icon transforms (a 16 px gray pad, then
the paper's jitters, zoom and rotation; the paper's renderer pads 2 px and shows the model
50 px, which leaves the icons' borders pale, see :func:`atlas.optvis.icon_transforms`); the
objective reads the center position of the layer. Upsampling to the model's 224 px input would
cost about 8x more per step.

Production settings on a GPU (``atlas render RUN --steps 1024 --attempts 4 --batch-size 256
--precision bf16``): a level's cells in large batches, ``precision`` runs the model's passes of
the optimization under ``torch.autocast`` (:mod:`atlas.runtime.precision`; the images, Adam and the
objective that picks the best attempt stay float32), and ``compile=True`` runs the network under
``torch.compile`` after one trial step; when compiling fails the render goes on without it and
says so in the log. ``scheduler`` renders the batches as Dask tasks on many workers (one per
GPU; :func:`atlas.runtime.distributed.run_render_batches`); the client writes each finished batch, so a
lost worker costs the batches it was running, which Dask runs again elsewhere.

Costs: the paper's production setting is 1024 steps, best of 4 (GPU). The default here is 256
steps, best of 1, for the coarsest level (every level with ``start="cold"``), which gives
recognisable icons in a quarter of the time and is what a CPU can afford (see
``benchmarks/README.md`` for icons per minute).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.checks import at_least, non_negative_number, one_of, positive_number
from atlas.checks import sizes as check_sizes
from atlas.models import AtlasModel, resolve_device
from atlas.optvis import Objective, directions, evaluate, fft_image, icon_transforms, render_vis, to_uint8
from atlas.optvis.objectives import whitening_from_covariance
from atlas.optvis.priors import border_penalty
from atlas.optvis.transform import Transform, apply
from atlas.runtime.precision import PRECISIONS
from atlas.stages.grid import ancestor_rows
from atlas.store.activations import ActivationsFile
from atlas.store.cells import CellLevel, cells_attrs, level_digest, read_cells
from atlas.store.icons import INPUT_KEYS, KIND, IconsFile, read_icons
from atlas.store.lineage import compare_input, recorded_inputs, refuse_other_settings, require_current, root_attrs

if TYPE_CHECKING:
    from distributed import Client

    from atlas.runtime.distributed import ModelSpec, Scheduler

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COSSIM_POW",
    "DEFAULT_ICON_VIEW",
    "ICON_VIEWS",
    "DEFAULT_ICON_SIZE",
    "DEFAULT_REFINE_LR",
    "DEFAULT_REFINE_STEPS",
    "DEFAULT_START",
    "DEFAULT_STEPS",
    "MIN_ICON_SIZE",
    "check_render_settings",
    "RENDER_STARTS",
    "IconBatch",
    "IconBatchResult",
    "RenderSummary",
    "cell_generator",
    "icon_view_transforms",
    "parent_rows",
    "compile_model",
    "render_icon_batch",
    "render_cells",
    "render_directions",
    "whitening_from_activations",
]

log = logging.getLogger(__name__)

#: Icon side in pixels (the paper's icons are 80 px).
DEFAULT_ICON_SIZE = 80
#: Optimizer steps per icon (the paper: 1024; 256 already gives recognisable icons).
DEFAULT_STEPS = 256
#: Renders per cell, the best kept (the paper: 4).
DEFAULT_ATTEMPTS = 1
#: Cells per optimizer batch.
DEFAULT_BATCH_SIZE = 32
#: Exponent of the cosine factor of the icon objective (the notebooks: 4; it raises the icons'
#: cosine to their direction from about the members' average to clearly above it).
DEFAULT_COSSIM_POW = 4.0
#: Adam learning rate of the icons (Lucid's default is 0.05). On 64 real cells at 128 steps,
#: 0.08 made icons sharper and more saturated (mean |Laplacian| 0.183 -> 0.267, saturation
#: 0.204 -> 0.264) at a cosine to the direction at 224 px of 0.741 against 0.762
#: (benchmarks/README.md, ``icons_peer-lr.json``).
DEFAULT_LR = 0.08
#: What the model sees of an icon at each step (:func:`icon_view_transforms`).
DEFAULT_ICON_VIEW = "whole"
#: Where the icon objective reads the layer (``render_cells(objective=...)``): ``"mean"`` over
#: the icon's positions (default: on 64 real cells it raised the cosine of the icon's spatially
#: averaged activation at 224 px to its direction from 0.710 to 0.762, benchmarks/README.md) or
#: the ``"center"`` position (the paper notebooks).
ICON_OBJECTIVES = ("mean", "center")
DEFAULT_ICON_OBJECTIVE = "mean"
#: How the icons start (``render_cells(start=...)``): ``"cold"``, every cell from noise with
#: ``steps`` steps; ``"parent"``, the coarsest level so, and every cell of a finer level from its
#: parent cell's icon (:func:`parent_rows`) with ``refine_steps`` steps.
RENDER_STARTS = ("cold", "parent")
DEFAULT_START = "cold"
#: Steps of a cell that starts from its parent's icon.
DEFAULT_REFINE_STEPS = 16
#: Adam learning rate of those steps: half the icons' rate, so that the parent's icon is refined,
#: not overwritten by the first (full-size) Adam steps (on 64 real cells of each level it kept the
#: cosine at 224 px within 0.01 of a 128-step cold render, benchmarks/README.md).
DEFAULT_REFINE_LR = 0.04


#: ``icon_view`` -> the arguments of :func:`atlas.optvis.icon_transforms`.
ICON_VIEWS = {"whole": {"pad_width": 16, "pad_value": 0.5}, "wide": {"pad_width": 8, "pad_value": 0.5},
              "notebooks": {"pad_width": 2, "pad_value": 1.0}}
#: The smallest icon side in pixels.
MIN_ICON_SIZE = 8


def _reads_mean(objective: str) -> bool:
    """Whether the icon ``objective`` reads the spatial mean (True) or the center (False); a
    clear error for anything else."""
    return one_of("objective", objective, ICON_OBJECTIVES) == "mean"


def check_render_settings(
    *,
    icon_size: int = DEFAULT_ICON_SIZE,
    steps: int = DEFAULT_STEPS,
    attempts: int = DEFAULT_ATTEMPTS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    cossim_pow: float = DEFAULT_COSSIM_POW,
    icon_view: str = DEFAULT_ICON_VIEW,
    precision: str = "fp32",
    border_prior: float = 0.0,
    objective: str = DEFAULT_ICON_OBJECTIVE,
    levels: Sequence[int] | None = None,
    transforms: Sequence[Transform] | None = None,
    start: str = DEFAULT_START,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    refine_lr: float = DEFAULT_REFINE_LR,
) -> list[Transform]:
    """Check the settings of :func:`render_cells` (the config's ``[render]`` and ``[classes]``
    sections are checked here too); a bad one raises :class:`~atlas.checks.SettingError` naming
    it. Returns the transforms (``transforms``, or those of ``icon_view``), checked to fit an icon."""
    at_least("icon_size", icon_size, MIN_ICON_SIZE)
    at_least("steps", steps, 1)
    at_least("attempts", attempts, 1)
    at_least("batch_size", batch_size, 1)
    positive_number("lr", lr)
    non_negative_number("cossim_pow", cossim_pow, " (0: a plain dot product)")
    non_negative_number("border_prior", border_prior, " (0: no frame prior)")
    one_of("icon_view", icon_view, tuple(ICON_VIEWS))
    one_of("objective", objective, ICON_OBJECTIVES)
    one_of("precision", precision, PRECISIONS)
    one_of("start", start, RENDER_STARTS)
    at_least("refine_steps", refine_steps, 0)
    positive_number("refine_lr", refine_lr)
    if levels is not None:
        check_sizes("levels", levels)
    transforms = list(icon_view_transforms(icon_view) if transforms is None else transforms)
    try:
        apply(transforms, torch.zeros(1, 3, icon_size, icon_size), torch.Generator())
    except ValueError as e:
        raise ValueError(f"icon_size {icon_size} is too small for the transforms ({e}); use a larger icon_size "
                         "or smaller transforms") from e
    return transforms


def icon_view_transforms(icon_view: str) -> list[Transform]:
    """The icon transforms for ``icon_view``: ``"whole"`` (default: a 16 px gray pad, the model sees
    the whole icon at 78 px of 80), ``"wide"`` (an 8 px gray pad, a 62 px window) or
    ``"notebooks"`` (the paper notebooks' 2 px white pad and 50 px window: about 2.1x cheaper a
    step than ``whole`` on a CPU, pale and soft borders). Measured in ``benchmarks/README.md``,
    "Icons side by side with dreamlens"."""
    return icon_transforms(**ICON_VIEWS[one_of("icon_view", icon_view, tuple(ICON_VIEWS))])


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
    icon_size: int = DEFAULT_ICON_SIZE,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    cossim_pow: float = DEFAULT_COSSIM_POW,
    whiten: np.ndarray | None = None,
    transforms: Sequence[Transform] | None = None,
    device: torch.device | None = None,
    precision: str = "fp32",
    input_size: int | None = None,
    border_prior: float = 0.0,
    objective: str = "center",
    init: torch.Tensor | None = None,
    redirect_relu_steps: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one icon per direction, best of ``len(generators)`` attempts, in one batch per attempt.

    Args:
        vecs: (B, C) directions in ``layer``.
        generators: per attempt, B generators (one per direction): the random start (unless
            ``init``) and the transforms.
        transforms: default :func:`atlas.optvis.icon_transforms`.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the steps (see :func:`render_vis`).
        border_prior: weight of :func:`atlas.optvis.priors.border_penalty` relative to the
            objective (0: none).
        objective: ``"center"`` or ``"mean"``, where the direction objective reads the layer
            (see :func:`render_cells`).
        init: optional start images (B, 3, S, S) in [0, 1] instead of noise (a warm start, e.g.
            the parent cells' icons: :func:`render_cells` with ``start="parent"``).
        redirect_relu_steps: steps with Lucid's redirected ReLU gradient at the start (see
            :func:`atlas.optvis.render_vis`; a warm start has no dead units to revive).

    Returns:
        icons (B, 3, S, S) in [0, 1] on the CPU, and their objective values (B,) (float32).
    """
    vecs_t = torch.as_tensor(np.asarray(vecs, np.float32))
    dev = device if device is not None else model.device
    obj = directions(layer, vecs_t, cossim_pow=cossim_pow, whiten=whiten, spatial_mean=_reads_mean(objective))
    transforms = icon_transforms() if transforms is None else transforms
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


def parent_rows(child: CellLevel, parent: CellLevel, chunk: int = 4096) -> np.ndarray:
    """For each cell of ``child`` (a finer level), the row of its parent cell in ``parent``, (M,) int64.

    The parent is the ``parent`` cell that contains the child cell's center (with grid sizes that
    double, cell ``(iy, ix)``'s parent is ``(iy // 2, ix // 2)``). Where that cell was not kept
    (fewer rows than the level's ``min_count``), the parent is the kept cell whose direction has
    the highest cosine to the child's.
    """
    if not len(parent):
        raise ValueError(f"grid {parent.size} kept no cell, so the cells of grid {child.size} have no parent")
    rows = ancestor_rows(child.coords, child.size, parent.cell_id, parent.size)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        p = parent.direction.astype(np.float32)
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            rows[part] = np.argmax(child.direction[part].astype(np.float32) @ p.T, axis=1)
    return rows


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
    icon_size: int = DEFAULT_ICON_SIZE
    steps: int = DEFAULT_STEPS
    attempts: int = DEFAULT_ATTEMPTS
    lr: float = DEFAULT_LR
    cossim_pow: float = DEFAULT_COSSIM_POW
    seed: int = 0
    whiten: np.ndarray | None = None
    transforms: tuple[Transform, ...] | None = None
    precision: str = "fp32"
    border_prior: float = 0.0
    objective: str = "center"
    #: (B, S, S, 3) uint8 start images (the parent cells' icons), or None to start from noise
    init: np.ndarray | None = None
    redirect_relu_steps: int = 16


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
    cos = _icon_cossim(model, batch.layer, images, batch.directions, _reads_mean(batch.objective))
    return IconBatchResult(batch.size, batch.rows, to_uint8(images), values.float().numpy(), cos,
                           time.perf_counter() - t0, f"pid {os.getpid()}")


def compile_model(model: AtlasModel, layer: str, *, icon_size: int = DEFAULT_ICON_SIZE,
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


@dataclass
class RenderSummary:
    """What a render run did."""

    output: Path
    rendered: dict[int, int] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = False
    up_to_date: bool = False
    mean_cossim: float = float("nan")
    #: grid size -> mean cosine to the cell direction of the icons rendered now at that level
    level_cossim: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        if self.up_to_date and not self.complete:
            sizes = ", ".join(f"{s}x{s}" for s in self.total)
            return f"the {sizes} icons of {self.output} are complete and current; nothing to do"
        if self.up_to_date:
            return f"{self.output} is complete and current; nothing to do"
        n = sum(self.rendered.values())
        rate = n / self.seconds * 60 if self.seconds > 0 else float("nan")
        levels = ", ".join(f"{s}x{s}: {self.rendered.get(s, 0)}/{t}" for s, t in self.total.items())
        state = "complete" if self.complete else "incomplete (rerun to render the other levels)"
        per_level = ", ".join(f"{s}x{s} {c:.2f}" for s, c in self.level_cossim.items())
        per_level = f" ({per_level})" if len(self.level_cossim) > 1 else ""
        return (f"rendered {n} icons ({levels}) in {self.seconds:.1f} s ({rate:.1f} icons/min, mean cosine "
                f"to the cell direction {self.mean_cossim:.2f}{per_level}); {self.output} is {state}")


def _batches(store: IconsFile, sizes: Sequence[int], counts: Mapping[int, int],
             batch_size: int) -> list[tuple[int, np.ndarray]]:
    """The pending work as (grid size, rows) batches of a fixed partition of each level.

    Rows ``[k * batch_size, (k + 1) * batch_size)`` of a level always form batch k, and a batch
    is written at once, so a resumed render optimizes exactly the batches an uninterrupted one
    would (the cells of a batch share float rounding; see the module docstring).
    """
    out = []
    for s in sizes:
        done = np.ones(counts[s], bool)
        done[store.pending(s)] = False
        for start in range(0, counts[s], batch_size):
            rows = np.flatnonzero(~done[start:start + batch_size]) + start
            if len(rows):
                out.append((s, rows))
    return out


def render_settings(
    cells_hash: str, model: str, layer: str, *, icon_size: int, steps: int, attempts: int, lr: float,
    cossim_pow: float, seed: int, whiten: np.ndarray | None, transforms: Sequence[Transform],
    objective: str = "center",
) -> dict[str, Any]:
    """The settings hashed into ``icons.h5`` (batch size and device are not: they do not change icons)."""
    whiten_hash = None
    if whiten is not None:
        whiten_hash = hashlib.sha256(np.ascontiguousarray(whiten, np.float32).tobytes()).hexdigest()[:16]
    return {
        "cells_settings_hash": cells_hash, "model": model, "layer": layer, "icon_size": int(icon_size),
        "steps": int(steps), "attempts": int(attempts), "lr": float(lr), "cossim_pow": float(cossim_pow),
        "seed": int(seed), "whiten": whiten_hash, "transforms": [repr(t) for t in transforms],
        "param": "fft_image(sd=0.01, decay_power=1, decorrelate=True)",
        "objective": "directions(neuron, center)" if objective == "center" else "directions(mean)",
    }


def render_cells(
    cells_path: str | os.PathLike,
    icons_path: str | os.PathLike,
    model: AtlasModel | ModelSpec | str,
    *,
    levels: Sequence[int] | None = None,
    icon_size: int = DEFAULT_ICON_SIZE,
    steps: int = DEFAULT_STEPS,
    attempts: int = DEFAULT_ATTEMPTS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    cossim_pow: float = DEFAULT_COSSIM_POW,
    whiten: np.ndarray | bool | None = None,
    transforms: Sequence[Transform] | None = None,
    icon_view: str = DEFAULT_ICON_VIEW,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    precision: str = "fp32",
    border_prior: float = 0.0,
    objective: str = DEFAULT_ICON_OBJECTIVE,
    start: str = DEFAULT_START,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    refine_lr: float = DEFAULT_REFINE_LR,
    compile: bool | str = False,
    scheduler: str | Scheduler | Client | None = None,
) -> RenderSummary:
    """The render stage: an icon for every cell of ``cells.h5``, written to ``icons.h5``.

    Args:
        cells_path: a complete ``cells.h5`` of the grid stage.
        icons_path: where to write (layout: :mod:`atlas.store.icons`); resumed when it holds a
            render with the same settings, keeping the icons of every level whose cells are
            unchanged (a level new to the grid is added, one whose cells changed is rendered
            again). A render with other settings is left as it is and
            :class:`~atlas.store.common.SettingsChangedError` names the changes, unless
            ``overwrite``; cells made from a layout that changed since raise
            :class:`~atlas.store.common.StaleInputError` (run grid first).
        model: the model the cells were collected from (checked against ``cells.h5``); with a
            ``scheduler``, a name or :class:`atlas.runtime.distributed.ModelSpec` that every worker loads.
        levels: grid sizes to render now (default all); the file always has rows for all.
        icon_size: icon side in pixels (default 80, as in the paper).
        steps: optimizer steps per attempt (default 256; the paper: 1024).
        attempts: renders per cell, the one with the highest objective kept (default 1; the paper: 4).
        batch_size: cells optimized together (default 32; larger on a GPU). Not part of the
            settings hash (see the module docstring for what it changes).
        lr: Adam learning rate (default 0.05).
        cossim_pow: exponent of ``max(cos, 0.1)`` in the objective (default 4; 0 = plain dot product).
        whiten: optional (C, C) inverse covariance of the layer's activations
            (:func:`atlas.optvis.whitening_matrix`), or True to compute it from the
            ``activations.h5`` the cells came from (:func:`whitening_from_activations`);
            directions become ``v @ whiten`` (the paper's icons are whitened). Default: off.
        transforms: default :func:`icon_view_transforms` of ``icon_view``.
        icon_view: ``"whole"`` (default: the model sees the whole icon, 78 px of 80), ``"wide"``
            (62 px) or ``"notebooks"`` (the paper notebooks' 50 px window: about 2.1x cheaper a
            step on a CPU, pale borders); see :func:`icon_view_transforms`.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...; the model is moved there.
        seed: base seed of every cell's generator (see :func:`cell_generator`).
        progress: show a tqdm bar (icons/s).
        overwrite: start over even if ``icons_path`` could be resumed or holds other settings.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the optimization's model passes
            under ``torch.autocast`` (part of the settings hash when not fp32).
        border_prior: weight of the frame prior (:func:`atlas.optvis.priors.border_penalty`,
            relative to the objective; 0, the default, for none): pulls each icon's outer 5 px
            toward a smooth mid-gray frame (part of the settings hash when not 0).
        objective: where the icon objective reads the layer: ``"mean"`` (default: the direction
            objective on the activation averaged over every position the icon covers, so the
            whole icon depicts the direction) or ``"center"`` (the paper notebooks': the center
            position only). The stored and reported cosine is read the same way.
        start: how the icons start: ``"cold"`` (default): every cell from noise with ``steps``
            steps (the hash of renders made before the setting existed); ``"parent"`` renders
            the levels coarse to fine, the coarsest from noise with ``steps`` steps and every
            cell of a finer level from its parent cell's icon (the coarser cell that holds it,
            :func:`parent_rows`) with ``refine_steps`` steps, so rendering a level renders the
            coarser levels first (about 8x faster per icon; the icons of a region share one
            picture, see the module docstring).
        refine_steps: steps of a cell that starts from its parent's icon (default 16; at most
            ``steps``).
        refine_lr: Adam learning rate of those steps (default 0.04).
        compile: run the network under ``torch.compile`` (True: the inductor backend; a string:
            that backend); falls back to eager with a WARNING when compiling fails. In-process only.
        scheduler: render the batches as Dask tasks (:mod:`atlas.runtime.distributed`): ``"local:N"``,
            a scheduler address, an :class:`atlas.runtime.distributed.Scheduler` or a ``distributed.Client``.
            Each worker loads the model itself on its device (``device`` is the workers'), renders
            whole batches, and this process writes them into ``icons.h5`` as they finish.

    Returns:
        a :class:`RenderSummary`.
    """
    t0 = time.perf_counter()
    transforms = check_render_settings(  # bad values fail here, before any work
        icon_size=icon_size, steps=steps, attempts=attempts, batch_size=batch_size, lr=lr, cossim_pow=cossim_pow,
        icon_view=icon_view, precision=precision, border_prior=border_prior, objective=objective, levels=levels,
        transforms=transforms, start=start, refine_steps=refine_steps, refine_lr=refine_lr)
    model_spec = None
    if scheduler is not None:
        from atlas.runtime.distributed import ModelSpec

        model_spec = ModelSpec.of(model, device=device)
        model = model_spec.for_shapes().load("cpu")  # the client only checks names and layers
    elif not isinstance(model, AtlasModel):
        raise ValueError(f"render_cells needs an AtlasModel here (got {type(model).__name__}); a model name or "
                         "ModelSpec is for scheduler=...")
    cattrs = cells_attrs(cells_path)
    require_current(cells_path)  # cells made from a layout that changed since: StaleInputError (run grid)
    if cattrs.get("model") and cattrs["model"] != model.name:
        raise ValueError(f"{cells_path} was collected with model {cattrs['model']!r} but the model given is "
                         f"{model.name!r}; render with --model {cattrs['model']}")
    layer = str(cattrs["layer"])
    model.layer(layer)  # unknown layer -> a helpful error before any work
    all_levels = read_cells(cells_path)
    wanted = sorted(all_levels) if levels is None else sorted({int(s) for s in levels})
    unknown = sorted(set(wanted) - set(all_levels))
    if unknown:
        raise ValueError(f"{cells_path} has grid sizes {sorted(all_levels)}, not {unknown}; pick from those")
    # with start="parent", a level's parent is the next coarser level of the file
    parent_of = dict(zip(sorted(all_levels)[1:], sorted(all_levels))) if start == "parent" else {}
    if parent_of and wanted:
        coarser = [s for s in sorted(all_levels) if s < wanted[-1] and s not in wanted]
        if coarser:
            log.info("the %s icons start from their parents': rendering the coarser levels %s too",
                     ", ".join(f"{s}x{s}" for s in wanted), ", ".join(f"{s}x{s}" for s in coarser))
            wanted = sorted(wanted + coarser)
    if whiten is True:
        source = cattrs.get("source")
        if not source or not Path(source).is_file():
            raise ValueError(f"whiten=True needs the activations.h5 that {cells_path} was built from ({source!r} "
                             "is not there); pass the matrix instead: whiten=whitening_from_activations(PATH)")
        log.info("computing the whitening matrix of %s from %s", layer, source)
        whiten = whitening_from_activations(source, layer)
    elif whiten is False:
        whiten = None
    settings = render_settings(str(cattrs.get("settings_hash", "")), model.name, layer, icon_size=icon_size,
                               steps=steps, attempts=attempts, lr=lr, cossim_pow=cossim_pow, seed=seed,
                               whiten=whiten, transforms=transforms, objective=objective)
    if precision != "fp32":  # fp32 renders keep the hash of earlier versions
        settings["precision"] = precision
    if border_prior:  # so do renders without the frame prior
        settings["border_prior"] = float(border_prior)
    refine_steps = min(int(refine_steps), int(steps))  # a warm start never costs more than a cold one
    if start != "cold":  # and cold renders
        settings.update(start=start, refine_steps=refine_steps, refine_lr=float(refine_lr))
    icons_path = Path(icons_path)
    total = {s: len(all_levels[s]) for s in wanted}
    found = None if overwrite else root_attrs(icons_path)
    if found is not None and found.get("kind") == KIND:
        # other settings: SettingsChangedError, nothing touched; only the cells' hash changed: not current
        same = not refuse_other_settings(icons_path, found, settings, stage="render", input_keys=INPUT_KEYS)
        recorded = (recorded_inputs(found) or {}).get("cells")
        if same and found.get("complete") and compare_input(recorded, root_attrs(cells_path)) != "changed":
            log.info("%s is complete and current; skipping render", icons_path)
            return RenderSummary(icons_path, total=total, up_to_date=True, complete=True)

    dev = resolve_device(device) if model_spec is None else torch.device("cpu")
    if model_spec is None and model.device != dev:
        log.info("moving the model to %s", dev)
        model.to(dev)
    attrs = dict(model=model.name, layer=layer, cells=str(cells_path), icon_size=int(icon_size), steps=int(steps),
                 attempts=int(attempts), lr=float(lr), cossim_pow=float(cossim_pow), seed=int(seed),
                 whiten=whiten is not None, transforms=", ".join(repr(t) for t in transforms),
                 cells_settings_hash=settings["cells_settings_hash"], start=start,
                 refine_steps=refine_steps if parent_of else 0, refine_lr=float(refine_lr) if parent_of else 0.0)
    digests = {s: level_digest(lv.cell_id, lv.direction) for s, lv in all_levels.items()}
    store = IconsFile.prepare(icons_path, {s: lv.cell_id for s, lv in all_levels.items()}, icon_size, settings,
                              attrs, digests=digests, inputs={"cells": cells_path}, overwrite=overwrite)
    work = _batches(store, wanted, {s: len(all_levels[s]) for s in wanted}, batch_size)
    n_work = sum(len(rows) for _, rows in work)
    summary = RenderSummary(icons_path, rendered={s: 0 for s in wanted}, total=total)
    if not n_work:
        # the levels asked for are done (others, if any, are left to a run that asks for them)
        log.info("levels %s of %s are complete and current; skipping render", list(wanted), icons_path)
        summary.up_to_date = True
        summary.complete = store.finish()
        return summary
    where = dev if model_spec is None else f"Dask workers ({model_spec.device})"
    how = f"{steps} steps" if not parent_of else (f"the coarsest level {steps} steps, the others from their parents' "
                                                   f"icons {refine_steps} steps at lr {refine_lr}")
    log.info("rendering %d icons of %s (%s) on %s: %s, best of %d, %d per batch, precision %s", n_work, layer,
             ", ".join(f"{s}x{s}" for s in wanted), where, how, attempts, batch_size, precision)
    template = IconBatch(layer, 0, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 0), np.float32),
                         icon_size=icon_size, steps=steps, attempts=attempts, lr=lr, cossim_pow=cossim_pow, seed=seed,
                         whiten=whiten,
                         transforms=tuple(transforms), precision=precision, border_prior=float(border_prior),
                         objective=objective)

    def level_batches(size: int) -> list[IconBatch]:
        """The pending batches of level ``size``; with a parent level (rendered by now), each cell
        starts from its parent's icon as stored."""
        lv, parent = all_levels[size], parent_of.get(size)
        batches = [dataclasses.replace(template, size=size, rows=rows, cell_id=lv.cell_id[rows],
                                       directions=lv.direction[rows].astype(np.float32))
                   for s, rows in work if s == size]
        if not batches or parent is None:
            return batches
        above = read_icons(icons_path, [parent])[parent]
        if not above.done.all():
            raise RuntimeError(f"grid {parent} of {icons_path} is not fully rendered, so grid {size} cannot start "
                               "from it; render again")
        up = parent_rows(lv, all_levels[parent])
        return [dataclasses.replace(b, init=above.icons[up[b.rows]], steps=refine_steps, lr=refine_lr,
                                    redirect_relu_steps=0) for b in batches]

    level_cossims: dict[int, list[np.ndarray]] = {}
    bar = tqdm(total=n_work, unit="icon", desc=f"render {layer}", disable=not progress)

    def write(result: IconBatchResult) -> None:
        store.write(result.size, result.rows, result.icons, result.objective, result.cossim)
        summary.rendered[result.size] += len(result.rows)
        level_cossims.setdefault(result.size, []).append(result.cossim)
        bar.update(len(result.rows))
        bar.set_postfix(cossim=f"{float(np.mean(result.cossim)):.2f}")

    try:
        if model_spec is not None:
            from atlas.runtime.distributed import client_for, run_render_batches

            with client_for(scheduler) as client:
                for size in wanted:  # level by level: a level's cells may start from the one before
                    run_render_batches(client, model_spec, level_batches(size), render_batch=render_icon_batch,
                                       on_batch=write)
        else:
            runner = model
            if compile:
                runner = compile_model(model, layer, icon_size=icon_size,
                                       backend=compile if isinstance(compile, str) else "inductor")
            for size in wanted:
                for batch in level_batches(size):
                    write(render_icon_batch(runner, batch))
    finally:
        bar.close()
    summary.complete = store.finish()
    summary.seconds = time.perf_counter() - t0
    if level_cossims:
        per_level = {size: np.concatenate(level_cossims[size]) for size in sorted(level_cossims)}
        summary.mean_cossim = float(np.mean(np.concatenate(list(per_level.values()))))
        summary.level_cossim = {size: float(np.mean(c)) for size, c in per_level.items()}
    log.info("%s", summary.describe())
    return summary
