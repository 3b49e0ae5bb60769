"""The render stage's settings: :class:`RenderSettings`, the one home of its defaults (the config's
``[render]`` section and ``atlas render`` read theirs from it), the allowed values and the checks.

Importing this module loads neither torch nor the optimization code, so the command line can read
the defaults cheaply; the checks that need them import them when a setting is made.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from atlas.checks import SettingError, at_least, non_negative_number, one_of, positive_number
from atlas.checks import sizes as check_sizes

if TYPE_CHECKING:
    from atlas.optvis.transform import Transform

#: ``icon_view`` -> the arguments of :func:`atlas.optvis.icon_transforms`.
ICON_VIEWS = {"whole": {"pad_width": 16, "pad_value": 0.5}, "wide": {"pad_width": 8, "pad_value": 0.5},
              "notebooks": {"pad_width": 2, "pad_value": 1.0},
              "transformer": {"pad_width": 24, "pad_value": 0.5, "augment": "strong"}}
#: Where the icon objective reads the layer: ``"mean"`` over the icon's positions or the
#: ``"center"`` position (the paper notebooks).
ICON_OBJECTIVES = ("mean", "center")
#: How the icons start: ``"cold"``, every cell from noise with ``steps`` steps; ``"amortised"``,
#: every cell from its own icon as predicted by a network trained once for the render over all the
#: cells' directions (:mod:`~atlas.stages.render.amortised`), with ``refine_steps`` steps;
#: ``"parent"``, the coarsest level from noise, and every cell of a finer level from its parent
#: cell's icon (:func:`~atlas.stages.render.parent_rows`) with ``refine_steps`` steps; ``"auto"``,
#: amortised for a file of at least :data:`AUTO_AMORTISED_CELLS` cells (all its levels), else cold.
RENDER_STARTS = ("auto", "cold", "amortised", "parent")
#: ``start="auto"`` trains the amortised start's network for a file of at least this many cells:
#: below it, training (``amortise_steps`` batches) costs about as much as rendering the cells
#: from noise, and the cold icons are a little closer to their directions.
AUTO_AMORTISED_CELLS = 1000
#: The smallest icon side in pixels.
MIN_ICON_SIZE = 8


@dataclass(frozen=True)
class RenderSettings:
    """Everything :func:`~atlas.stages.render.render_cells` renders with (config section
    ``[render]``; the options of ``atlas render``). Each field's default is the stage's.

    What decides the icons is hashed into ``icons.h5`` (:meth:`hashed`); ``levels`` (which
    levels to render now) and ``batch_size`` are not (see :mod:`atlas.stages.render` for what a
    batch size changes). A bad value raises :class:`~atlas.checks.SettingError` naming its field.
    """

    #: Grid sizes to render now (empty: every level of ``cells.h5``); the file always has rows
    #: for all of them.
    levels: tuple[int, ...] = ()
    #: Icon side in pixels (the paper's icons are 80 px).
    icon_size: int = 80
    #: Optimizer steps of an icon started from noise: the coarsest level, or every level with
    #: ``start="cold"`` (the paper: 1024; 256 already gives recognisable icons).
    steps: int = 256
    #: Renders per cell, the one with the highest objective kept (the paper: 4).
    attempts: int = 1
    #: Cells optimized together (on a GPU, 128-256).
    batch_size: int = 32
    #: Adam learning rate of the icons (Lucid's default is 0.05). On 64 real cells at 128 steps,
    #: 0.08 made icons sharper and more saturated (mean |Laplacian| 0.183 -> 0.267, saturation
    #: 0.204 -> 0.264) at a cosine to the direction at 224 px of 0.741 against 0.762
    #: (benchmarks/README.md, ``icons_peer-lr.json``).
    lr: float = 0.08
    #: Exponent of ``max(cos, 0.1)`` in the icon objective (the notebooks: 4; it raises the icons'
    #: cosine to their direction from about the members' average to clearly above it; 0: a plain
    #: dot product).
    cossim_pow: float = 4.0
    #: Whiten the directions by the inverse covariance of the layer's activations, computed from
    #: the ``activations.h5`` the cells came from (the paper's icons are whitened).
    whiten: bool = False
    #: Base seed of every cell's generator (:func:`~atlas.stages.render.cell_generator`).
    seed: int = 0
    #: What the model sees of an icon at each step, a key of :data:`ICON_VIEWS`
    #: (:func:`icon_view_transforms`); ``"transformer"`` is the stronger augmentation for the token
    #: layers of vision transformers.
    icon_view: str = "whole"
    #: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the optimization's model passes under
    #: ``torch.autocast`` (:mod:`atlas.runtime.precision`).
    precision: str = "fp32"
    #: Weight of the frame prior (:func:`atlas.optvis.priors.border_penalty`, relative to the
    #: objective; 0: none): pulls each icon's outer 5 px toward a smooth mid-gray frame.
    border_prior: float = 0.0
    #: Where the icon objective reads the layer, one of :data:`ICON_OBJECTIVES`: ``"mean"`` over
    #: every position the icon covers, so that the whole icon depicts the direction (on 64 real
    #: cells it raised the cosine of the icon's spatially averaged activation at 224 px to its
    #: direction from 0.710 to 0.762, benchmarks/README.md), or the ``"center"`` position (the
    #: paper notebooks). The stored and reported cosine is read the same way.
    objective: str = "mean"
    #: How the icons start, one of :data:`RENDER_STARTS`. ``"amortised"`` renders a pyramid about
    #: 7x faster than a 128-step cold render at a cosine within 0.01 of it on every level of the
    #: real ~1M-row atlas, but neighbouring cells share one layout, changing slowly across the map;
    #: ``"parent"`` is as fast, but the icons under one coarse cell share its picture. The default,
    #: ``"auto"``, is amortised for files of :data:`AUTO_AMORTISED_CELLS` cells or more and cold
    #: below, and keeps the start of a render already in the file (benchmarks/README.md, "Every
    #: zoom level"; :mod:`atlas.stages.render`).
    start: str = "auto"
    #: Steps of a cell that starts from a predicted or parent icon (at most ``steps`` are taken).
    refine_steps: int = 16
    #: Adam learning rate of those steps: half the icons' rate, so that the parent's icon is
    #: refined, not overwritten by the first (full-size) Adam steps (on 64 real cells of each
    #: level it kept the cosine at 224 px within 0.01 of a 128-step cold render, benchmarks/README.md).
    refine_lr: float = 0.04
    #: Adam steps of the amortised start's network (``start="amortised"``), each on a batch of
    #: ``batch_size`` directions drawn from all the cells; paid once per render.
    amortise_steps: int = 1000
    #: Adam learning rate of that network's weights.
    amortise_lr: float = 2e-3
    #: Move each cell's predicted icon by its own random cyclic shift before its steps (the FFT
    #: icon is periodic, so the shift leaves no seam), so that neighbouring cells start from
    #: different layouts; off by default: the network composes its icons around their middle, and
    #: shifted starts lose about 0.02 of cosine after the 16 steps (benchmarks/README.md).
    amortise_shift: bool = False

    def __post_init__(self) -> None:
        from atlas.runtime.precision import PRECISIONS

        levels = () if self.levels is None else tuple(self.levels)
        object.__setattr__(self, "levels", check_sizes("levels", levels) if levels else ())
        at_least("icon_size", self.icon_size, MIN_ICON_SIZE)
        at_least("steps", self.steps, 1)
        at_least("attempts", self.attempts, 1)
        at_least("batch_size", self.batch_size, 1)
        positive_number("lr", self.lr)
        non_negative_number("cossim_pow", self.cossim_pow, " (0: a plain dot product)")
        if not isinstance(self.whiten, bool):
            raise SettingError("whiten", f"must be True or False, not {type(self.whiten).__name__} (a whitening "
                                         "matrix goes to render_cells(whiten=...))")
        one_of("icon_view", self.icon_view, tuple(ICON_VIEWS))
        one_of("precision", self.precision, PRECISIONS)
        non_negative_number("border_prior", self.border_prior, " (0: no frame prior)")
        one_of("objective", self.objective, ICON_OBJECTIVES)
        one_of("start", self.start, RENDER_STARTS)
        at_least("refine_steps", self.refine_steps, 0)
        positive_number("refine_lr", self.refine_lr)
        at_least("amortise_steps", self.amortise_steps, 1)
        positive_number("amortise_lr", self.amortise_lr)
        if not isinstance(self.amortise_shift, bool):
            raise SettingError("amortise_shift", f"must be true or false, not {self.amortise_shift!r}")
        self.transforms()  # the icon view fits an icon of this size

    def resolve(self, n_cells: int, kept: str | None = None) -> RenderSettings:
        """These settings for a file of ``n_cells`` cells (all its levels): ``start="auto"`` made
        ``"amortised"`` or ``"cold"`` (the start that is hashed and recorded), or ``kept``, the
        start of the render already in the file (a finished or stopped render keeps its start when
        the default changes, rather than being refused as another render)."""
        if self.start != "auto":
            return self
        if kept in ("cold", "amortised"):
            return dataclasses.replace(self, start=kept)
        return dataclasses.replace(self, start="amortised" if n_cells >= AUTO_AMORTISED_CELLS else "cold")

    @property
    def warm_steps(self) -> int:
        """The steps a cell that starts from its parent's icon takes: ``refine_steps``, but never
        more than a cold start's ``steps``."""
        return min(int(self.refine_steps), int(self.steps))

    def transforms(self, transforms: Sequence[Transform] | None = None) -> list[Transform]:
        """The icon transforms: ``transforms``, or those of :attr:`icon_view`; checked to leave the
        model a picture of an ``icon_size`` icon (a ValueError naming the fix if not)."""
        import torch

        from atlas.optvis.transform import apply

        transforms = list(icon_view_transforms(self.icon_view) if transforms is None else transforms)
        try:
            apply(transforms, torch.zeros(1, 3, self.icon_size, self.icon_size), torch.Generator())
        except ValueError as e:
            raise ValueError(f"icon_size {self.icon_size} is too small for the transforms ({e}); use a larger "
                             "icon_size or smaller transforms") from e
        return transforms

    def hashed(self, cells_hash: str, model: str, layer: str, *, whiten: np.ndarray | None,
               transforms: Sequence[Transform]) -> dict[str, Any]:
        """The settings hashed into ``icons.h5``: :func:`render_settings`, plus the settings added
        since, each only where it differs from what renders made before it did, so that those
        renders stay current."""
        settings = render_settings(cells_hash, model, layer, icon_size=self.icon_size, steps=self.steps,
                                   attempts=self.attempts, lr=self.lr, cossim_pow=self.cossim_pow, seed=self.seed,
                                   whiten=whiten, transforms=transforms, objective=self.objective)
        if self.precision != "fp32":  # what every render was before the setting
            settings["precision"] = self.precision
        if self.border_prior:  # no frame prior, likewise
            settings["border_prior"] = float(self.border_prior)
        if self.start != "cold":  # and cold starts
            settings.update(start=self.start, refine_steps=self.warm_steps, refine_lr=float(self.refine_lr))
        if self.start == "amortised":
            settings.update(amortise_steps=int(self.amortise_steps), amortise_lr=float(self.amortise_lr))
            if self.amortise_shift:  # renders before the setting did not shift
                settings["amortise_shift"] = True
        return settings


def render_settings(
    cells_hash: str, model: str, layer: str, *, icon_size: int, steps: int, attempts: int, lr: float,
    cossim_pow: float, seed: int, whiten: np.ndarray | None, transforms: Sequence[Transform],
    objective: str = "center",
) -> dict[str, Any]:
    """The settings hashed into ``icons.h5`` that every render has had (batch size and device are
    not: they do not change icons). ``objective`` defaults to ``"center"``, the objective of the
    renders made before the setting existed, whose hash this keeps."""
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


def reads_mean(objective: str) -> bool:
    """Whether the icon ``objective`` reads the spatial mean (True) or the center (False); a
    clear error for anything else."""
    return one_of("objective", objective, ICON_OBJECTIVES) == "mean"


def icon_view_transforms(icon_view: str) -> list[Transform]:
    """The icon transforms for ``icon_view``: ``"whole"`` (the default: a 16 px gray pad, the model
    sees the whole icon at 78 px of 80), ``"wide"`` (an 8 px gray pad, a 62 px window),
    ``"notebooks"`` (the paper notebooks' 2 px white pad and 50 px window: about 2.1x cheaper a
    step than ``whole`` on a CPU, pale and soft borders), or ``"transformer"`` (a 24 px gray pad
    and much stronger jitter, zoom and rotation, :func:`atlas.optvis.icon_transforms` with
    ``augment="strong"``: a 60 px window of an 80 px icon, for vision transformers' token layers).
    The first three are measured in ``benchmarks/README.md``, "Icons side by side with dreamlens";
    ``"transformer"`` was only checked to raise the objective on random-init ViTs (no trained
    transformer weights were at hand).

    MACO (Fel et al., "Unlocking Feature Visualization for Deeper Networks with MAgnitude
    Constrained Optimization", NeurIPS 2023), the other remedy the literature gives for deep
    networks and ViTs, fixes the magnitude of the image's Fourier spectrum to that of natural
    photos and optimizes only its phase, so the image keeps a photo's power spectrum however long
    it is optimized. It is implemented as :func:`atlas.optvis.maco_image` (``atlas vis
    --param maco``, :func:`atlas.optvis.vis`), but the render stage's icons keep the FFT
    parameterization of :func:`atlas.optvis.fft_image`: the icon view only chooses transforms."""
    from atlas.optvis import icon_transforms

    return icon_transforms(**ICON_VIEWS[one_of("icon_view", icon_view, tuple(ICON_VIEWS))])


def check_render_settings(*, transforms: Sequence[Transform] | None = None, **settings: Any) -> list[Transform]:
    """Check render settings (fields of :class:`RenderSettings`, by keyword; the config's
    ``[classes]`` section is checked here too); a bad one raises
    :class:`~atlas.checks.SettingError` naming it. Returns the transforms (``transforms``, or those
    of ``icon_view``), checked to fit an icon."""
    return RenderSettings(**settings).transforms(transforms)


#: The defaults by name (:class:`RenderSettings` holds them).
DEFAULT_ICON_SIZE = RenderSettings.icon_size
DEFAULT_STEPS = RenderSettings.steps
DEFAULT_ATTEMPTS = RenderSettings.attempts
DEFAULT_BATCH_SIZE = RenderSettings.batch_size
DEFAULT_LR = RenderSettings.lr
DEFAULT_COSSIM_POW = RenderSettings.cossim_pow
DEFAULT_ICON_VIEW = RenderSettings.icon_view
DEFAULT_ICON_OBJECTIVE = RenderSettings.objective
DEFAULT_START = RenderSettings.start
DEFAULT_REFINE_STEPS = RenderSettings.refine_steps
DEFAULT_REFINE_LR = RenderSettings.refine_lr
