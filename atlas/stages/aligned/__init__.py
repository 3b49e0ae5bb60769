"""Aligned atlases: two sets of activations of the same inputs laid out on one map, so that the
same place on both means the same photos at the same positions.

Lucid's ``aligned_activation_atlas`` recipe (after Carter et al., "Activation Atlas", Distill
2019): two layers of one model (InceptionV1's ``inception4a`` and ``inception4e``, both 14 x 14,
so the rows of one collect line up), or one layer of two models (trained InceptionV1 and the same
network with random weights, on the same photos), are

1. mapped into each other by least squares (``a W_ab + c_ab``: a -> b, ``b W_ba + c_ba``: b -> a),
   fitted on most photos and scored (R^2) on the photos held out (:mod:`~atlas.stages.aligned.fit`);
2. laid out together: side a's row ``a`` as ``[a, a W_ab + c_ab]``, side b's row ``b`` as ``[b W_ba + c_ba, b]``
   (Lucid's BIDIRECTIONAL mode), one UMAP over both, one normalisation, split back into one
   ``layout.h5`` per side (:mod:`~atlas.stages.aligned.layout`);
3. gridded from each side's own activations, rendered with each side's own model and layer, and
   tiled, each tiles manifest naming the other side (:mod:`~atlas.stages.aligned.stage`).

In the run folder: ``RUN/aligned/<name>/{fit.json, maps.h5, joint.umap.pkl, a/, b/}``, each side
folder an atlas (``layout.h5``, ``cells.h5``, ``icons.h5``, ``tiles/``; with its own
``activations.h5`` when the side is collected here, :mod:`~atlas.stages.aligned.sides`).

The package, one idea a module: :mod:`~atlas.stages.aligned.settings`, :mod:`~atlas.stages.aligned.pairs`
(the rows line up), :mod:`~atlas.stages.aligned.fit`, :mod:`~atlas.stages.aligned.layout`,
:mod:`~atlas.stages.aligned.sides` (whose activations, whose model) and :mod:`~atlas.stages.aligned.stage`.
The settings load with the package; the names of the other modules, which load torch and UMAP,
are imported on first use, so reading the defaults (as ``atlas`` does to build its options) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from atlas.stages.aligned.settings import DEFAULT_HOLDOUT, DEFAULT_RIDGES, AlignedSettings, AlignedSide

if TYPE_CHECKING:
    from atlas.stages.aligned.fit import R2 as R2
    from atlas.stages.aligned.fit import AlignedMaps as AlignedMaps
    from atlas.stages.aligned.fit import FitSummary as FitSummary
    from atlas.stages.aligned.fit import LinearMap as LinearMap
    from atlas.stages.aligned.fit import fit_linear_map as fit_linear_map
    from atlas.stages.aligned.fit import fit_maps_file as fit_maps_file
    from atlas.stages.aligned.fit import r2_score as r2_score
    from atlas.stages.aligned.layout import JointLayoutSummary as JointLayoutSummary
    from atlas.stages.aligned.layout import joint_layout as joint_layout
    from atlas.stages.aligned.pairs import RowsMismatchError as RowsMismatchError
    from atlas.stages.aligned.pairs import SideRows as SideRows
    from atlas.stages.aligned.pairs import check_rows_line_up as check_rows_line_up
    from atlas.stages.aligned.sides import RunModel as RunModel
    from atlas.stages.aligned.sides import load_side_model as load_side_model
    from atlas.stages.aligned.sides import run_model as run_model
    from atlas.stages.aligned.stage import AlignedSummary as AlignedSummary
    from atlas.stages.aligned.stage import StepCallback as StepCallback
    from atlas.stages.aligned.stage import aligned_atlas as aligned_atlas
    from atlas.stages.aligned.stage import aligned_folder as aligned_folder

#: Name -> the module of this package that defines it, for the names imported on first use.
_LAZY = {
    "AlignedMaps": "fit",
    "FitSummary": "fit",
    "R2": "fit",
    "LinearMap": "fit",
    "fit_linear_map": "fit",
    "fit_maps_file": "fit",
    "r2_score": "fit",
    "JointLayoutSummary": "layout",
    "joint_layout": "layout",
    "RowsMismatchError": "pairs",
    "SideRows": "pairs",
    "check_rows_line_up": "pairs",
    "RunModel": "sides",
    "load_side_model": "sides",
    "run_model": "sides",
    "AlignedSummary": "stage",
    "StepCallback": "stage",
    "aligned_atlas": "stage",
    "aligned_folder": "stage",
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
    "AlignedMaps",
    "AlignedSettings",
    "AlignedSide",
    "AlignedSummary",
    "DEFAULT_HOLDOUT",
    "DEFAULT_RIDGES",
    "FitSummary",
    "JointLayoutSummary",
    "LinearMap",
    "R2",
    "RowsMismatchError",
    "RunModel",
    "SideRows",
    "StepCallback",
    "aligned_atlas",
    "aligned_folder",
    "check_rows_line_up",
    "fit_linear_map",
    "fit_maps_file",
    "joint_layout",
    "load_side_model",
    "r2_score",
    "run_model",
]
