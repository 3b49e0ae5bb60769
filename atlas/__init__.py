"""atlas: activation atlases of image classifiers.

Carter, Armstrong, Schubert, Johnson, Olah, "Activation Atlas", Distill 2019, building on
Olah, Mordvintsev, Schubert, "Feature Visualization", Distill 2017.

Each pipeline stage is a plain function over arrays and files::

    import atlas
    model = atlas.load_model("inceptionv1", weights="bvlc_googlenet.pth")
    atlas.collect("photos/", "run/activations.h5", model, atlas.CollectSettings(layers=("inception4c",)))

Sharing and looking: ``atlas.export_site(run, "site/")`` writes a static site of the atlas;
``atlas.show(run)`` displays it inline in Jupyter (and ``atlas.show(images)`` an image).

Names are imported on first use, so ``import atlas`` stays cheap (no torch until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AtlasUMAP": "atlas.stages.reduce",
    "GridSettings": "atlas.stages.grid",
    "ReduceSettings": "atlas.stages.reduce",
    "build_tiles": "atlas.stages.tiles",
    "cell_means": "atlas.stages.grid",
    "channel_view": "atlas.tools.channels",
    "channels_figure": "atlas.tools.channels",
    "fill_channel_cache": "atlas.tools.channels",
    "write_channels_html": "atlas.tools.channels",
    "publish_channel_view": "atlas.tools.channels",
    "comparison_file": "atlas.stages.reduce",
    "explain_photo": "atlas.tools.explain",
    "cascading_randomization": "atlas.tools.sanity",
    "dream": "atlas.optvis.dream",
    "fgsm": "atlas.tools.adversarial",
    "pgd": "atlas.tools.adversarial",
    "attack_photos": "atlas.tools.adversarial",
    "run_adversarial": "atlas.tools.adversarial",
    "fooling_images": "atlas.tools.fooling",
    "fooling_gallery": "atlas.tools.fooling",
    "show": "atlas.web.notebook",
    "style_transfer": "atlas.optvis.neural_style",
    "export_site": "atlas.web.export",
    "grid_cells": "atlas.stages.grid",
    "grid_file": "atlas.stages.grid",
    "load_placer": "atlas.stages.reduce",
    "make_server": "atlas.web.serve",
    "normalize_layout": "atlas.stages.reduce",
    "project": "atlas.stages.reduce",
    "reduce_file": "atlas.stages.reduce",
    "serve": "atlas.web.serve",
    "ActivationsFile": "atlas.store.activations",
    "AtlasModel": "atlas.models",
    "CollectSettings": "atlas.stages.collect.stage",
    "CollectSummary": "atlas.stages.collect.stage",
    "ConfigError": "atlas.config",
    "ModelError": "atlas.models",
    "UnknownLayerError": "atlas.models",
    "capture": "atlas.models",
    "collect": "atlas.stages.collect.stage",
    "load_config": "atlas.config",
    "load_model": "atlas.models",
    "run_pipeline": "atlas.pipeline",
    "sample_positions": "atlas.stages.collect.stage",
    "SettingsChangedError": "atlas.store.common",
    "StaleInputError": "atlas.store.common",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
