"""The render stage's settings: their defaults, the allowed values and the checks.

Importing this module loads neither torch nor the optimization code; the checks that need them
import them when they run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from atlas.checks import at_least, non_negative_number, one_of, positive_number
from atlas.checks import sizes as check_sizes

if TYPE_CHECKING:
    from atlas.optvis.transform import Transform

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
#: parent cell's icon (:func:`~atlas.stages.render.parent_rows`) with ``refine_steps`` steps.
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


def reads_mean(objective: str) -> bool:
    """Whether the icon ``objective`` reads the spatial mean (True) or the center (False); a
    clear error for anything else."""
    return one_of("objective", objective, ICON_OBJECTIVES) == "mean"


def icon_view_transforms(icon_view: str) -> list[Transform]:
    """The icon transforms for ``icon_view``: ``"whole"`` (default: a 16 px gray pad, the model sees
    the whole icon at 78 px of 80), ``"wide"`` (an 8 px gray pad, a 62 px window) or
    ``"notebooks"`` (the paper notebooks' 2 px white pad and 50 px window: about 2.1x cheaper a
    step than ``whole`` on a CPU, pale and soft borders). Measured in ``benchmarks/README.md``,
    "Icons side by side with dreamlens"."""
    from atlas.optvis import icon_transforms

    return icon_transforms(**ICON_VIEWS[one_of("icon_view", icon_view, tuple(ICON_VIEWS))])


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
    """Check the settings of :func:`~atlas.stages.render.render_cells` (the config's ``[render]``
    and ``[classes]`` sections are checked here too); a bad one raises
    :class:`~atlas.checks.SettingError` naming it. Returns the transforms (``transforms``, or those
    of ``icon_view``), checked to fit an icon."""
    import torch

    from atlas.optvis.transform import apply
    from atlas.runtime.precision import PRECISIONS

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
