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
    "AtlasUMAP": "atlas.reduce",
    "GridSettings": "atlas.grid",
    "ReduceSettings": "atlas.reduce",
    "build_tiles": "atlas.tiles",
    "cell_means": "atlas.grid",
    "channel_view": "atlas.channels",
    "channels_figure": "atlas.channels",
    "fill_channel_cache": "atlas.channels",
    "write_channels_html": "atlas.channels",
    "publish_channel_view": "atlas.channels",
    "comparison_file": "atlas.reduce",
    "explain_photo": "atlas.explain",
    "cascading_randomization": "atlas.sanity",
    "dream": "atlas.optvis.dream",
    "fgsm": "atlas.adversarial",
    "pgd": "atlas.adversarial",
    "attack_photos": "atlas.adversarial",
    "run_adversarial": "atlas.adversarial",
    "fooling_images": "atlas.fooling",
    "fooling_gallery": "atlas.fooling",
    "show": "atlas.notebook",
    "style_transfer": "atlas.optvis.style",
    "export_site": "atlas.export",
    "grid_cells": "atlas.grid",
    "grid_file": "atlas.grid",
    "load_placer": "atlas.reduce",
    "make_server": "atlas.serve",
    "normalize_layout": "atlas.reduce",
    "project": "atlas.reduce",
    "reduce_file": "atlas.reduce",
    "serve": "atlas.serve",
    "ActivationsFile": "atlas.store.activations",
    "AtlasModel": "atlas.models",
    "CollectSettings": "atlas.collect",
    "CollectSummary": "atlas.collect",
    "ConfigError": "atlas.config",
    "ModelError": "atlas.models",
    "UnknownLayerError": "atlas.models",
    "capture": "atlas.models",
    "collect": "atlas.collect",
    "load_config": "atlas.config",
    "load_model": "atlas.models",
    "run_pipeline": "atlas.pipeline",
    "sample_positions": "atlas.collect",
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
