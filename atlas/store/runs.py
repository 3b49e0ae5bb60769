"""Where an atlas's files are: a run folder, or one layer's folder of a multi-layer run.

A single-layer run holds every file itself (``RUN/activations.h5``, ``layout.h5``,
``cells.h5``, ...). A multi-layer run (:mod:`atlas.pipeline`) keeps one ``activations.h5`` for
all its layers and each layer's atlas in ``RUN/layers/<layer>/``; the tools (attack, explain)
take either kind of atlas folder and find the activations through :func:`run_file`.
"""

from __future__ import annotations

import os
from pathlib import Path

LAYERS_DIR = "layers"


def run_file(atlas_dir: str | os.PathLike, name: str) -> Path:
    """``atlas_dir/name``; for ``activations.h5`` of a layer folder (``RUN/layers/<layer>``) that
    holds none, the run's own ``RUN/activations.h5``."""
    atlas_dir = Path(atlas_dir)
    path = atlas_dir / name
    if name == "activations.h5" and not path.is_file() and atlas_dir.parent.name == LAYERS_DIR:
        shared = atlas_dir.parent.parent / name
        if shared.is_file():
            return shared
    return path


def run_layers(run_dir: str | os.PathLike) -> list[str]:
    """The layer folders of a multi-layer run (sorted), or [] for any other folder."""
    folder = Path(run_dir) / LAYERS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_atlas_files(atlas_dir: str | os.PathLike, names: dict[str, str]) -> None:
    """Raise ``ValueError`` unless ``atlas_dir`` holds every file of ``names`` (file -> the stage
    that makes it), naming the layer folders when ``atlas_dir`` is a multi-layer run."""
    atlas_dir = Path(atlas_dir)
    for name, stage in names.items():
        if run_file(atlas_dir, name).is_file():
            continue
        layers = run_layers(atlas_dir)
        if layers:
            raise ValueError(f"{atlas_dir} is a multi-layer run: give one layer's atlas folder, e.g. "
                             f"{atlas_dir / LAYERS_DIR / layers[0]} (layers: {', '.join(layers)})")
        raise ValueError(f"{atlas_dir} holds no {name}; give the folder of an atlas run (after `atlas {stage}`)")


__all__ = ["LAYERS_DIR", "require_atlas_files", "run_file", "run_layers"]
