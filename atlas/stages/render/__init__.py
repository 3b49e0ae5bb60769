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

Starts (``start``). ``"auto"`` (the default): ``"amortised"`` for a file of at least
:data:`AUTO_AMORTISED_CELLS` cells (all levels), ``"cold"`` below, where training costs about as
much as rendering from noise; a render already in the file keeps its start. ``"cold"``: every
cell from noise with ``steps`` steps. ``"amortised"`` (:mod:`~atlas.stages.render.amortised`):
one small network is trained once per render, over every cell direction of the file (all
levels), with the icons' own objective and transforms, to map a direction to an icon's Fourier
spectrum (``amortise_steps`` Adam steps of ``batch_size`` directions at ``amortise_lr``); every
cell then starts from its own predicted icon (8-bit, as a stored icon) and takes
``refine_steps`` steps at ``refine_lr``. The network is kept beside ``icons.h5``
(``icons.start.pt``, keyed by the settings and the cells), so a killed render resumes from the
same starts without training again. On 64 real cells of each level of the real ~1M-row atlas,
with its training counted, it renders the whole pyramid about 7x faster than 128 cold steps at a
cosine at 224 px within 0.005 of theirs on every level, with sharper and more saturated icons
(``benchmarks/README.md``, "Every zoom level"). The network maps close directions to close
pictures, so neighbouring cells share one layout that changes slowly across the map, where cold
icons draw a new one per cell from their random start; ``amortise_shift`` moves each cell's
start by its own cyclic shift (different layouts, about 0.02 less cosine).
``"parent"`` (an option): the levels are rendered coarse to fine;
the coarsest from noise with ``steps`` steps, and every cell of a finer level from its parent
cell's icon as stored in ``icons.h5`` (:func:`parent_rows`) with ``refine_steps`` steps. As fast
and as close to the cold icons, but the icons of a region then share their ancestor's picture,
refined: in the viewer, all the grid-80 cells under one grid-20 cell show one picture. Because a
cell starts from an 8-bit icon, a resumed warm render equals an uninterrupted one as before.

Resuming: icons are written after every batch (layout and crash safety in
:mod:`atlas.store.icons`); a rerun with the same settings renders only the cells not done yet,
and a complete file is left alone. Levels are kept by their cells: a grid level added later
(or one left out with ``levels``) is added to the file, a level whose cells changed is
rendered again, and the others keep their icons. Other render settings are refused
(:class:`~atlas.store.common.SettingsChangedError`) unless ``overwrite``.

Size: an 80 px icon reaches the model as 78 px after the icon transforms (a 16 px gray pad, then
the paper's jitters, zoom and rotation; the paper's renderer pads 2 px and shows the model
50 px, which leaves the icons' borders pale, see :func:`atlas.optvis.icon_transforms`); the
objective reads the layer at that size (over its positions, or at the center one). Upsampling to
the model's 224 px input would cost about 8x more per step.

Production settings on a GPU (``atlas render RUN --steps 1024 --attempts 4 --batch-size 256
--precision bf16``): a level's cells in large batches, ``precision`` runs the model's passes of
the optimization under ``torch.autocast`` (:mod:`atlas.runtime.precision`; the images, Adam and the
objective that picks the best attempt stay float32), and ``compile=True`` runs the network under
``torch.compile`` after one trial step; when compiling fails the render goes on without it and
says so in the log. ``scheduler`` renders the batches as Dask tasks on many workers (one per
GPU; :mod:`atlas.stages.render.dask`); the client writes each finished batch, so a lost worker
costs the batches it was running, which Dask runs again elsewhere.

Costs: the paper's production setting is 1024 steps, best of 4 (GPU). The defaults here
(:class:`RenderSettings`, the one home of the stage's defaults, which the config and the command
line read) are a quarter of those steps, best of 1, from noise, which gives recognisable icons in
a quarter of the time and is what a CPU can afford for a few levels; the warm starts render a
whole pyramid in a seventh of the time, with the caveats above (see ``benchmarks/README.md`` for
icons per minute).

The package, one idea a module: :mod:`~atlas.stages.render.settings` (:class:`RenderSettings`
and its checks), :mod:`~atlas.stages.render.directions` (the direction objective's render, each
cell's generator, whitening), :mod:`~atlas.stages.render.amortised` (the amortised start),
:mod:`~atlas.stages.render.parents` (the parent start),
:mod:`~atlas.stages.render.batch` (one batch of cells, in-process or as a Dask task, and
``torch.compile``), :mod:`~atlas.stages.render.dask` (the batches as Dask tasks) and
:mod:`~atlas.stages.render.stage` (the stage over files). The settings load with the package;
the names of the other modules, which load torch, are imported on first use, so reading the
defaults (as ``atlas`` does to build its options) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from atlas.stages.render.settings import (
    AUTO_AMORTISED_CELLS,
    DEFAULT_ATTEMPTS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COSSIM_POW,
    DEFAULT_ICON_OBJECTIVE,
    DEFAULT_ICON_SIZE,
    DEFAULT_ICON_VIEW,
    DEFAULT_LR,
    DEFAULT_REFINE_LR,
    DEFAULT_REFINE_STEPS,
    DEFAULT_START,
    DEFAULT_STEPS,
    ICON_OBJECTIVES,
    ICON_VIEWS,
    MIN_ICON_SIZE,
    RENDER_STARTS,
    RenderSettings,
    check_render_settings,
    icon_view_transforms,
    render_settings,
)

if TYPE_CHECKING:
    from atlas.stages.render.batch import IconBatch as IconBatch
    from atlas.stages.render.batch import IconBatchResult as IconBatchResult
    from atlas.stages.render.batch import compile_model as compile_model
    from atlas.stages.render.batch import render_icon_batch as render_icon_batch
    from atlas.stages.render.directions import cell_generator as cell_generator
    from atlas.stages.render.directions import render_directions as render_directions
    from atlas.stages.render.directions import whitening_from_activations as whitening_from_activations
    from atlas.stages.render.parents import parent_rows as parent_rows
    from atlas.stages.render.stage import RenderSummary as RenderSummary
    from atlas.stages.render.stage import render_cells as render_cells

#: Name -> the module of this package that defines it, for the names imported on first use.
_LAZY = {
    "IconBatch": "batch",
    "IconBatchResult": "batch",
    "compile_model": "batch",
    "render_icon_batch": "batch",
    "cell_generator": "directions",
    "render_directions": "directions",
    "whitening_from_activations": "directions",
    "parent_rows": "parents",
    "RenderSummary": "stage",
    "render_cells": "stage",
    "_icon_cossim": "batch",  # not exported; benchmarks/bench_icons_peer.py imports it from here
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AUTO_AMORTISED_CELLS",
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_COSSIM_POW",
    "DEFAULT_ICON_OBJECTIVE",
    "DEFAULT_ICON_SIZE",
    "DEFAULT_ICON_VIEW",
    "DEFAULT_LR",
    "DEFAULT_REFINE_LR",
    "DEFAULT_REFINE_STEPS",
    "DEFAULT_START",
    "DEFAULT_STEPS",
    "ICON_OBJECTIVES",
    "ICON_VIEWS",
    "MIN_ICON_SIZE",
    "RENDER_STARTS",
    "IconBatch",
    "IconBatchResult",
    "RenderSettings",
    "RenderSummary",
    "cell_generator",
    "check_render_settings",
    "compile_model",
    "icon_view_transforms",
    "parent_rows",
    "render_cells",
    "render_directions",
    "render_icon_batch",
    "render_settings",
    "whitening_from_activations",
]
