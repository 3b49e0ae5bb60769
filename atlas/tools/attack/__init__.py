"""Patch attacks from atlas neighbourhoods (Carter et al., "Activation Atlas", Distill 2019, section
"Focusing on a single classification": a snorkel photo plus a steam-locomotive patch reads as
"scuba diver").

The steps, each a function of its own (and together :func:`run_attack`, ``atlas attack``):

1. :func:`comparison_rows` + :func:`comparison_cells`: the class-comparison atlas. Every spatial
   position of views (crops, mirror images) of photos of the two classes gets its attribution to
   the target and to the source (``h . d logit / d h``, as collect computes it); the positions are
   placed on the atlas with its fitted layout, and each cell is scored by the mean target-minus-
   source attribution of the positions in it. The best cells are the neighbourhoods that push
   toward the target more than toward the source; a cell's direction is the mean of its
   positions that push toward the target.
2. :func:`render_patches`: a neighbourhood -> a patch: a fresh feature visualization of the cell's
   mean direction at patch resolution (the direction objective with cosine weighting, averaged
   over every position of the layer so that the whole patch carries the feature; FFT +
   decorrelated colour; Lucid's standard transforms), or the cell's rendered icon.
3. :func:`paste`: patches pasted into a corner at several sizes (a fraction of the image width);
   "static" is one corner for all images, "dynamic" the best corner per image.
4. :func:`evaluate_patch`: over images the model classified as the source before, the fraction
   whose top-1 becomes the target, and the target probability before and after.

Baselines, rendered and chosen exactly as the atlas patch is: patches from random atlas cells, and
uniform noise patches. The source images are split in two: the patch of each family (atlas,
random cell, noise) is chosen on the first half and every figure is measured on the second, so
picking the best of several candidates does not inflate the score. The universal mode pastes the
chosen patches over many images of many classes and counts flips to the target.

The package, one idea a module: :mod:`~atlas.tools.attack.neighbourhoods` (step 1: the
class-comparison rows and cells), :mod:`~atlas.tools.attack.patches` (step 2: rendered, photo-crop,
icon and noise patches), :mod:`~atlas.tools.attack.evaluate` (steps 3 and 4: pasting, the model's
answers, success rates, Wilson intervals), :mod:`~atlas.tools.attack.photos` (the source views and
the photos of each class), :mod:`~atlas.tools.attack.report` (the report, its tables and figures)
and :mod:`~atlas.tools.attack.run` (the settings and :func:`run_attack`, the steps in order).

The article's own protocol (``--protocol article``: ten patches per pair, every photo x patch
counted, dynamic and static placement, bootstrap intervals) is :mod:`~atlas.tools.attack.protocol`
(the counting) and :mod:`~atlas.tools.attack.article` (:func:`run_protocol`, end to end); the
neighbourhoods of a *third* class, the article's kind of patch (a steam locomotive that turns a
snorkel into a scuba diver), are found by :mod:`~atlas.tools.attack.third`.
"""

from atlas.tools.attack.evaluate import (
    CORNERS,
    DEFAULT_SIZES,
    Z95,
    PatchEffect,
    evaluate_patch,
    paste,
    predict,
    wilson_interval,
)
from atlas.tools.attack.neighbourhoods import Candidate, ComparisonRows, comparison_cells, comparison_rows
from atlas.tools.attack.patches import example_patches, icon_patches, noise_patches, render_patches
from atlas.tools.attack.photos import augment_photo, source_images
from atlas.tools.attack.report import FAMILIES, AttackReport, FamilyResult, write_report

from atlas.tools.attack.run import AttackSettings, run_attack  # isort: skip
from atlas.tools.attack.article import (
    KINDS,
    RANKS,
    ProtocolReport,
    ProtocolSettings,
    run_protocol,
    write_protocol_report,
)
from atlas.tools.attack.protocol import ProtocolCounts, ProtocolResult, protocol_result, two_way_bootstrap
from atlas.tools.attack.third import (
    atlas_class_attribution,
    atlas_example_patches,
    atlas_has_attribution,
    excluded_classes,
    push_gradient,
    third_class_cells,
)

__all__ = [
    "KINDS",
    "RANKS",
    "atlas_class_attribution",
    "atlas_has_attribution",
    "ProtocolCounts",
    "ProtocolReport",
    "ProtocolResult",
    "ProtocolSettings",
    "atlas_example_patches",
    "excluded_classes",
    "protocol_result",
    "push_gradient",
    "run_protocol",
    "third_class_cells",
    "two_way_bootstrap",
    "write_protocol_report",
    "CORNERS",
    "DEFAULT_SIZES",
    "FAMILIES",
    "Z95",
    "AttackReport",
    "AttackSettings",
    "Candidate",
    "FamilyResult",
    "PatchEffect",
    "augment_photo",
    "ComparisonRows",
    "comparison_cells",
    "comparison_rows",
    "evaluate_patch",
    "example_patches",
    "icon_patches",
    "noise_patches",
    "paste",
    "predict",
    "render_patches",
    "run_attack",
    "source_images",
    "wilson_interval",
    "write_report",
]
