"""The settings of an aligned atlas: :class:`AlignedSide` (which activations a side shows) and
:class:`AlignedSettings` (the one home of the defaults: the config's ``[[aligned]]`` tables and
``atlas align`` read theirs from it).

A bad value raises :class:`~atlas.checks.SettingError` naming its field (a side's as ``a.layer``,
``b.model``, ...), so the config names ``[aligned #1] a.layer`` and the command line ``--a-layer``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atlas.checks import SettingError, at_least, one_of
from atlas.stages.grid import check_grid_sizes
from atlas.stages.render import RenderSettings, check_render_settings

if TYPE_CHECKING:
    from atlas.stages.reduce import ReduceSettings

#: Share of the photos held out of the linear maps' fit, to score them (R^2) on photos they did not see.
DEFAULT_HOLDOUT = 0.2
#: Candidate ridge terms of the least-squares fit, relative to the mean channel variance: each
#: direction uses the one that predicts validation photos best (:mod:`atlas.stages.aligned.fit`).
#: The best falls as rows per channel grow: on 2,400 real InceptionV1 rows (512-832 channels) it
#: was 0.3-1; tens of thousands of rows want less.
DEFAULT_RIDGES = (1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)

_SIDES = ("a", "b")


@dataclass(frozen=True)
class AlignedSide:
    """One side of an aligned atlas: a layer, and the model whose activations of it are shown.

    Left at their defaults, ``model``, ``random_init`` and ``weights`` mean the run's own model
    (the one ``RUN/activations.h5`` was collected with). A side that names another model, other
    weights or random weights where the run has trained ones is collected by the aligned atlas
    itself, with the run's collect settings (:func:`atlas.stages.aligned.aligned_atlas`).

    Attributes:
        layer: the layer (``""`` on side b: side a's layer).
        model: a model spec (``"inceptionv1"``, ``"torchvision:NAME"``); ``""``: the run's.
        random_init: random (seeded) weights instead of trained ones.
        weights: a weight file; ``""``: the model's default (or the run's, for the run's model).
    """

    layer: str = ""
    model: str = ""
    random_init: bool = False
    weights: str = ""

    def __post_init__(self) -> None:
        for key in ("layer", "model", "weights"):
            if not isinstance(getattr(self, key), str):
                raise SettingError(key, f"must be a string, not {getattr(self, key)!r}")
        if not isinstance(self.random_init, bool):
            raise SettingError("random_init", f"must be true or false, not {self.random_init!r}")
        if self.model:
            from atlas.models import check_model_setting  # loads torch: only for a side that names a model

            check_model_setting("model", self.model)


@dataclass(frozen=True)
class AlignedSettings:
    """Everything that decides an aligned atlas (config: one ``[[aligned]]`` table each).

    Attributes:
        name: the atlas's name; its folder is ``RUN/aligned/<name>`` (lower case, dashes).
        a, b: the two sides (:class:`AlignedSide`); side b's layer defaults to side a's.
        holdout: share of the photos (whole photos, so that positions of one photo do not leak)
            held out of the linear maps' fit and scored on.
        ridge: candidate ridge terms of the fit, relative to the mean channel variance; each
            direction takes the one with the least error on validation photos (a ``holdout``
            share of the training photos), then is refitted on every training photo. One value:
            that ridge.
        layout: how the two sides share one layout: ``"joint"`` (each row laid out once by its
            two sides' own activations side by side, both sides at that one place) or
            ``"mapped"`` (Lucid's: each side's rows by their own activations and the other side's
            predicted through the linear maps, stacked and laid out together; see
            :mod:`atlas.stages.aligned.layout`).
        balance: scale each activation space of the joint vectors to the same mean row length
            (root mean square over the fitted rows), so that under the cosine metric one side's
            layer does not outweigh the other's because its activations are larger; off: the
            joint vectors are Lucid's, unscaled.
        seed: seeds the held-out photos, the UMAP sample and UMAP itself.
        n_neighbors, min_dist, metric, sample_size, refine_epochs: the joint UMAP
            (:class:`atlas.stages.reduce.ReduceSettings`); ``sample_size`` rows of both sides
            together are fitted, every other row is placed.
        sizes, min_count: the grid of each side (:class:`atlas.stages.grid.GridSettings`).
        icon_size, steps, batch_size, lr, objective, icon_view: the icons of each side
            (:func:`atlas.stages.render.render_cells`).
    """

    name: str = ""
    a: AlignedSide = field(default_factory=AlignedSide)
    b: AlignedSide = field(default_factory=AlignedSide)
    holdout: float = DEFAULT_HOLDOUT
    ridge: tuple[float, ...] = DEFAULT_RIDGES
    layout: str = "joint"
    balance: bool = True
    seed: int = 0
    # the reduce stage's defaults (tests/stages/test_aligned.py holds them equal to ReduceSettings'):
    # this module is read to build the command line, which must not load UMAP
    n_neighbors: int = 20
    min_dist: float = 0.01
    metric: str = "cosine"
    sample_size: int = 100_000
    refine_epochs: int = 25
    sizes: tuple[int, ...] = (10, 20)
    min_count: int = 4
    icon_size: int = RenderSettings.icon_size
    steps: int = 128
    batch_size: int = RenderSettings.batch_size
    lr: float = RenderSettings.lr
    objective: str = RenderSettings.objective
    icon_view: str = RenderSettings.icon_view

    def __post_init__(self) -> None:
        folder_name(self.name)
        for key in _SIDES:
            side = getattr(self, key)
            if isinstance(side, dict):  # a side given as a table: {"layer": ..., ...}
                side = _side_from(key, side)
                object.__setattr__(self, key, side)
            if not isinstance(side, AlignedSide):
                raise SettingError(key, f"must be a side (a layer, and optionally model, random_init, weights), "
                                        f"not {side!r}")
        if not self.a.layer:
            raise SettingError("a.layer", "must name a layer, e.g. inception4a")
        if not self.b.layer:
            object.__setattr__(self, "b", dataclasses.replace(self.b, layer=self.a.layer))
        if self.a == self.b:
            raise SettingError("b", f"shows the same activations as side a ({self.a.layer} of the same model); "
                                    "give side b another layer, another model or random weights")
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) \
                or not 0 < self.holdout < 1:
            raise SettingError("holdout", f"must be a share of the photos between 0 and 1 (e.g. 0.2), got "
                                          f"{self.holdout!r}")
        ridge = tuple(self.ridge) if isinstance(self.ridge, (list, tuple)) else (self.ridge,)
        if not ridge or any(isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0
                            for r in ridge):
            raise SettingError("ridge", f"must be numbers >= 0 (candidates, e.g. 0.01, 0.1, 1), got {self.ridge!r}")
        object.__setattr__(self, "ridge", tuple(float(r) for r in ridge))
        one_of("layout", self.layout, ("joint", "mapped"))
        at_least("seed", self.seed, 0)
        self.reduce_settings()  # the UMAP fields, checked as the reduce stage checks them
        object.__setattr__(self, "sizes", check_grid_sizes("sizes", self.sizes))
        at_least("min_count", self.min_count, 1)
        check_render_settings(icon_size=self.icon_size, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                              objective=self.objective, icon_view=self.icon_view)

    @property
    def folder_name(self) -> str:
        """The atlas's folder name inside ``RUN/aligned/``."""
        return folder_name(self.name)

    def side(self, key: str) -> AlignedSide:
        """Side ``"a"`` or ``"b"``."""
        if key not in _SIDES:
            raise ValueError(f"a side is 'a' or 'b', not {key!r}")
        return getattr(self, key)

    def reduce_settings(self) -> ReduceSettings:
        """The joint UMAP's settings, as the reduce stage's (the fit and placement code is its)."""
        from atlas.stages.reduce import ReduceSettings

        return ReduceSettings(n_neighbors=self.n_neighbors, min_dist=self.min_dist, metric=self.metric,
                              sample_size=self.sample_size, refine_epochs=self.refine_epochs, random_state=self.seed)


def folder_name(name: Any) -> str:
    """The folder of an aligned atlas called ``name``: ``"4a vs 4e"`` -> ``4a-vs-4e``. A name that
    gives an empty folder name, or only digits (which the viewer's scan skips), is a SettingError."""
    if not isinstance(name, str) or not name.strip():
        raise SettingError("name", "must name the aligned atlas (its folder is RUN/aligned/<name>), e.g. \"4a-4e\"")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if not slug or slug.isdigit():
        raise SettingError("name", f"must hold a letter (it names the folder RUN/aligned/<name>), got {name!r}")
    return slug


def _side_from(key: str, table: dict[str, Any]) -> AlignedSide:
    names = [f.name for f in dataclasses.fields(AlignedSide)]
    unknown = [k for k in table if k not in names]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SettingError(f"{key}.{unknown[0]}", f"is not a setting of a side{hint}; a side has {', '.join(names)}")
    try:
        return AlignedSide(**table)
    except SettingError as e:
        raise SettingError(f"{key}.{e.key}", e.reason) from None


__all__ = ["DEFAULT_HOLDOUT", "DEFAULT_RIDGES", "AlignedSettings", "AlignedSide", "folder_name"]
