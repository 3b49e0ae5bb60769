"""Where each side of an aligned atlas gets its rows: the run's ``activations.h5``, or a collect
of its own into ``RUN/aligned/<name>/<side>/activations.h5``.

A side reads the run's activations when it shows the run's model (its ``model``, ``random_init``
and ``weights`` left at their defaults, or naming the run's) at a layer the run collected. Any
other side (another model, other weights, random weights where the run's are trained, or a layer
the run did not collect) is collected by the aligned atlas with the run's collect settings: the
same source, sampling, positions per photo and seed, restricted to that side's layer, so that its
rows are the run's photos at the run's positions (checked before the fit:
:func:`atlas.stages.aligned.pairs.check_rows_line_up`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.models import AtlasModel, load_model
from atlas.stages.aligned.pairs import RowsMismatchError, SideRows
from atlas.stages.aligned.settings import AlignedSide
from atlas.stages.collect.stage import CollectSettings, weights_id
from atlas.store.activations import ActivationsFile
from atlas.store.common import ArtifactError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunModel:
    """What ``RUN/activations.h5`` was collected with.

    Attributes:
        name: the model spec, e.g. ``"inceptionv1"``.
        random_init: whether its weights were random.
        weights: the weight file as collect recorded it (``"name:size"``), None for the default.
        layers: the layers collected.
        collect: the :class:`~atlas.stages.collect.stage.CollectSettings` fields as recorded.
        source: where the photos were read from.
        precision: the collect's precision.
    """

    name: str
    random_init: bool
    weights: str | None
    layers: tuple[str, ...]
    collect: dict[str, Any]
    source: str
    precision: str = "fp32"
    grids: tuple[tuple[int, int], ...] = ()  # the grid (H, W) of each of the run's layers

    def collect_settings(self, layer: str) -> CollectSettings:
        """The run's collect settings, restricted to ``layer``; with ``"shared"`` sampling, at the
        run's places (drawn on the grid of the run's coarsest layer: ``shared_grid``)."""
        known = {f.name for f in dataclasses.fields(CollectSettings)}
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.collect.items() if k in known}
        if fields.get("sampling") == "shared" and not fields.get("shared_grid") and self.grids:
            fields["shared_grid"] = min(self.grids, key=lambda g: (g[0] * g[1], g))
        return CollectSettings(**{**fields, "layers": (layer,)})


def run_model(activations: str | os.PathLike) -> RunModel:
    """The :class:`RunModel` of a complete ``activations.h5``."""
    if not Path(activations).is_file():
        raise ArtifactError(f"{activations} does not exist: an aligned atlas is built on a run's activations; run "
                            "`atlas collect` (or `atlas run CONFIG`) into that run folder first")
    with ActivationsFile(activations) as acts:
        recorded = json.loads(str(acts.attrs.get("settings_json", "{}")))
        return RunModel(name=acts.model, random_init=bool(recorded.get("random_init", False)),
                        weights=recorded.get("weights"), layers=tuple(acts.layers),
                        collect=dict(recorded.get("collect", {})),
                        source=str(recorded.get("source") or acts.attrs.get("source", "")),
                        precision=str(recorded.get("precision", "fp32")),
                        grids=tuple(tuple(int(v) for v in acts.spec(name).grid_shape) for name in acts.layers))


def other_model(side: AlignedSide, run: RunModel) -> str | None:
    """Why ``side``'s model is not the run's (a phrase), or None when it is the run's."""
    if side.model and side.model != run.name:
        return f"it names the model {side.model} (the run's is {run.name})"
    if side.random_init and not run.random_init:
        return "it asks for random weights (the run's model is trained)"
    if side.weights and weights_id(side.weights) != run.weights:
        return f"it names the weights {side.weights}"
    return None


def label(side: AlignedSide, run: RunModel) -> str:
    """How a side is shown: ``"inceptionv1 · inception4a"``, ``"inceptionv1 (random weights) · inception4c"``."""
    own = other_model(side, run) is not None
    model = side.model or run.name
    random_init = side.random_init if own else run.random_init
    extra = " (random weights)" if random_init else (f" ({Path(side.weights).name})" if side.weights else "")
    return f"{model}{extra} · {side.layer}"


def load_side_model(side: AlignedSide, run: RunModel, *, run_weights: str | os.PathLike | None = None,
                    device: str = "auto") -> AtlasModel:
    """The model of ``side``: the run's (``run.name`` with ``run_weights``, random when the run's
    was) unless the side names another (:func:`other_model`)."""
    if other_model(side, run) is None:
        return load_model(run.name, weights=run_weights or None, random_init=run.random_init, device=device)
    return load_model(side.model or run.name, weights=side.weights or None, random_init=side.random_init,
                      device=device)


@dataclass(frozen=True)
class SidePlan:
    """Where one side's rows come from.

    Attributes:
        rows: the side's rows (its ``activations.h5`` and layer) and label.
        collect_reason: why it is collected into its own folder (None: it reads the run's file).
        collect_settings: the collect settings it is collected with.
        weights, random_init: its model's weights, as the collect records them.
    """

    rows: SideRows
    collect_reason: str | None = None
    collect_settings: CollectSettings | None = None
    weights: str | None = None
    random_init: bool = False


def plan_side(key: str, side: AlignedSide, model: AtlasModel, run: RunModel, run_activations: Path,
              folder: Path) -> SidePlan:
    """Where side ``key``'s rows come from (its own ``folder``/``key``/``activations.h5`` when it
    must be collected); checks that ``model`` is the side's and has its layer (an unknown layer
    raises :class:`~atlas.models.UnknownLayerError` listing the model's layers)."""
    expected = side.model or run.name
    if model.name != expected:
        raise ValueError(f"side {key} shows {expected}, but the model given for it is {model.name}; pass that "
                         f"side's model (model_{key}), or name {model.name} as its model")
    model.layer(side.layer)
    name = label(side, run)
    reason = other_model(side, run)
    if reason is None and side.layer not in run.layers:
        reason = f"the run collected {', '.join(run.layers)}, not {side.layer}"
    if reason is None:
        return SidePlan(SideRows(key, run_activations, side.layer, name))
    own = folder / key / "activations.h5"
    theirs = other_model(side, run) is not None  # else the run's model, at a layer the run did not collect
    return SidePlan(SideRows(key, own, side.layer, name), reason, run.collect_settings(side.layer),
                    weights=(side.weights or None) if theirs else None,
                    random_init=side.random_init if theirs else run.random_init)


def check_grids(plans: dict[str, SidePlan], models: dict[str, AtlasModel]) -> None:
    """Refuse, before anything is collected, two sides whose layers' grids differ: collect samples
    a photo's positions from its grid, so their rows would not line up."""
    grids = {}
    for key, plan in plans.items():
        if plan.collect_reason is None:
            with ActivationsFile(plan.rows.activations) as acts:
                grids[key] = acts.spec(plan.rows.layer).grid_shape
        else:  # the grid collect will sample: the layer's output at the model's input size
            shape = models[key].layer_shapes([plan.rows.layer])[plan.rows.layer]
            if len(shape) != 3:
                raise ValueError(f"side {key}'s layer {plan.rows.layer} has output shape {shape}, not (C, H, W): an "
                                 "aligned atlas needs spatial layers")
            grids[key] = (int(shape[1]), int(shape[2]))
    (ka, ga), (kb, gb) = grids.items()
    if ga != gb:
        raise RowsMismatchError(
            f"the rows of side {ka} ({plans[ka].rows.layer}, a {ga[0]} x {ga[1]} grid) and side {kb} "
            f"({plans[kb].rows.layer}, {gb[0]} x {gb[1]}) would not line up: collect samples each photo's positions "
            "from the layer's grid, so an aligned atlas needs two layers of the same grid shape (e.g. InceptionV1's "
            "inception4a ... inception4e, all 14 x 14)")


def same_model(x: AlignedSide, y: AlignedSide, run: RunModel) -> bool:
    """Whether sides ``x`` and ``y`` show one model (one loaded model serves both)."""
    if other_model(x, run) is None and other_model(y, run) is None:
        return True
    return (x.model or run.name, x.random_init, x.weights) == (y.model or run.name, y.random_init, y.weights)


__all__ = ["RunModel", "SidePlan", "check_grids", "label", "load_side_model", "other_model", "plan_side", "run_model", "same_model"]
