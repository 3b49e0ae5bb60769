"""Explain one photo: attribution maps over its pixels, and its activations' attribution at a layer.

:func:`explain_photo` runs every attribution method of :mod:`atlas.tools.attribution` on one photo for
one class (default: the model's top-1), plus the paper's per-position attribution at a layer
(``h . d logit / d h`` at every position of the layer's grid: where in the photo the layer's
activations push toward the class), and :func:`explain_figure` draws them over the photo with
the class probabilities. :func:`place_on_atlas` projects the photo's activations onto an
existing atlas with the layout's fitted UMAP (``transform``), so the figure and the viewer
(:func:`write_overlay`) show where the photo lives in the atlas and which neighbourhoods push
toward the class. :func:`evaluate_methods` scores the methods by deletion / insertion AUC over
many photos.

The package, one idea a module: :mod:`~atlas.tools.explain.maps` (one photo's attribution maps
and layer attribution), :mod:`~atlas.tools.explain.placement` (the photo placed on an atlas,
and the viewer overlay), :mod:`~atlas.tools.explain.figure` (the figure) and
:mod:`~atlas.tools.explain.scores` (the methods scored over many photos).
"""

from atlas.tools.explain.figure import atlas_background, explain_figure, save_image
from atlas.tools.explain.maps import (
    ALL_METHODS,
    DEFAULT_METHODS,
    SMOOTHABLE,
    Explanation,
    MethodSettings,
    explain_photo,
    layer_position_attribution,
    load_photo,
    method_map,
)
from atlas.tools.explain.placement import AtlasPlacement, overlay_name, place_on_atlas, write_overlay
from atlas.tools.explain.scores import MethodScores, evaluate_methods

__all__ = [
    "ALL_METHODS",
    "DEFAULT_METHODS",
    "SMOOTHABLE",
    "AtlasPlacement",
    "Explanation",
    "MethodScores",
    "MethodSettings",
    "atlas_background",
    "evaluate_methods",
    "explain_figure",
    "explain_photo",
    "layer_position_attribution",
    "load_photo",
    "method_map",
    "overlay_name",
    "place_on_atlas",
    "save_image",
    "write_overlay",
]
