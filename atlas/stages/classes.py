"""Class atlases and class-comparison atlases of a run, each a small atlas of its own.

Carter et al., "Activation Atlas" (Distill 2019), "Focusing on a single class" and "Class
comparison": the rows attributed to one class get their own UMAP layout, grid and icons; two
classes' rows get a layout whose x axis is the difference of their attributions (right: the
first class, left: the second) and whose y axis is a 1-D UMAP.

Each one lives in its own folder inside the run, with the files of a run::

    RUN/classes/<class name>/      layout.h5  cells.h5  icons.h5  tiles/
    RUN/compare/<a>--<b>/          layout.h5  cells.h5  icons.h5  tiles/

(folders named by the class names, e.g. ``classes/english-springer``, whatever form the class
was given in). In a multi-layer run (``layer=``) they go in that layer's folder,
``RUN/layers/<layer>/classes/<class name>/`` and ``RUN/layers/<layer>/compare/<a>--<b>/``.

so ``atlas serve RUN`` lists them in the viewer's atlas picker beside the main atlas. Every
step skips what is complete and current, as the stages do, so a rerun of the same command or
pipeline costs nothing.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas.checks import at_least
from atlas.models import AtlasModel
from atlas.stages.grid import check_grid_sizes
from atlas.stages.reduce.placement import REFINE_EPOCHS
from atlas.stages.render import RenderSettings, check_render_settings
from atlas.store.lineage import keep_or_replace

log = logging.getLogger(__name__)

#: what a comparison atlas's x axis is (the right class's attribution minus the left class's)
COMPARISON_AXIS = "attribution difference"


@dataclass(frozen=True)
class SubAtlasSettings:
    """Settings of every class and comparison atlas of a run (config section ``[classes]``).

    Attributes:
        names: classes to build class atlases of (names, WordNet ids or indices).
        compare: pairs of classes to build comparison atlases of.
        sizes: grid sizes (zoom levels); class atlases hold tens of thousands of rows at most,
            so coarser grids than the main atlas's.
        min_count: cells with fewer rows stay empty.
        class_top_n: rows kept besides those whose top class is the class: the ``class_top_n``
            most attributed to it (:func:`atlas.stages.reduce.select_class_rows`).
        sample_size: UMAP fit sample of a class atlas.
        icon_size, steps, batch_size: rendering of the icons (:func:`atlas.stages.render.render_cells`).
        lr: the icons' learning rate (:func:`atlas.stages.render.render_cells`).
        refine_epochs: placement epochs of the class layouts (:class:`atlas.stages.reduce.ReduceSettings`).
        objective, icon_view: where the icon objective reads the layer and what the model sees of
            an icon (:func:`atlas.stages.render.render_cells`).
    """

    names: tuple[str, ...] = ()
    compare: tuple[tuple[str, str], ...] = ()
    sizes: tuple[int, ...] = (10, 20)
    min_count: int = 4
    class_top_n: int = 2000
    sample_size: int = 100_000
    icon_size: int = RenderSettings.icon_size
    steps: int = 128
    batch_size: int = RenderSettings.batch_size
    lr: float = RenderSettings.lr
    refine_epochs: int = REFINE_EPOCHS
    objective: str = RenderSettings.objective
    icon_view: str = RenderSettings.icon_view

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "compare", tuple(tuple(str(c) for c in p) for p in self.compare))
        for pair in self.compare:
            if len(pair) != 2:
                raise ValueError(f"each comparison is a pair of classes, e.g. [\"tench\", \"goldfish\"], not {pair!r}")
        object.__setattr__(self, "sizes", check_grid_sizes("sizes", self.sizes))
        at_least("min_count", self.min_count, 1)
        at_least("class_top_n", self.class_top_n, 0)
        at_least("sample_size", self.sample_size, 3)
        at_least("refine_epochs", self.refine_epochs, 1)
        check_render_settings(icon_size=self.icon_size, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                              objective=self.objective, icon_view=self.icon_view)


@dataclass
class SubAtlasSummary:
    """What building one class or comparison atlas did."""

    folder: Path
    rows: int
    icons: int
    seconds: float
    up_to_date: bool = False

    def describe(self) -> str:
        where = f"{self.folder.parent.name}/{self.folder.name}"
        if self.up_to_date:
            return f"{where} ({self.rows} rows) is complete and current; nothing to do"
        return f"{where}: {self.rows} rows, {self.icons} icons rendered, in {self.seconds:.0f} s"


def slug(name: str) -> str:
    """A folder name for a class: ``"English springer"`` -> ``english-springer``."""
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not s:
        raise ValueError(f"class {name!r} gives an empty folder name")
    return s


def class_folder(run_dir: str | os.PathLike, name: str) -> Path:
    return Path(run_dir) / "classes" / slug(name)


def compare_folder(run_dir: str | os.PathLike, class_a: str, class_b: str) -> Path:
    return Path(run_dir) / "compare" / f"{slug(class_a)}--{slug(class_b)}"


def _root(run_dir: Path, layer: str | None) -> Path:
    """The folder a sub-atlas's ``classes/`` or ``compare/`` folder goes in: the run's, or its layer's."""
    return run_dir if layer is None else run_dir / "layers" / layer


def class_atlas(run_dir: str | os.PathLike, name: str, model: AtlasModel, settings: SubAtlasSettings | None = None,
                *, layer: str | None = None, device: str = "auto", progress: bool = True,
                overwrite: bool = False) -> SubAtlasSummary:
    """The class atlas of ``name`` in ``RUN/classes/<name>/`` (see the module docstring); of
    ``layer`` in ``RUN/layers/<layer>/classes/<name>/`` (needed when the run has several layers).

    A file of the class atlas made with other settings stops it
    (:class:`~atlas.store.common.SettingsChangedError`, nothing touched) unless ``overwrite``,
    which replaces just those files (the later ones follow them)."""
    from atlas.stages.reduce import ReduceSettings, reduce_file, resolve_class

    settings = settings or SubAtlasSettings()
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    index = resolve_class(name)
    label = _name_of(model, index)
    folder = class_folder(_root(run_dir, layer), label)
    folder.mkdir(parents=True, exist_ok=True)
    reduce_settings = ReduceSettings(class_filter=str(index), class_top_n=settings.class_top_n,
                                     sample_size=settings.sample_size, refine_epochs=settings.refine_epochs)
    keep_or_replace(lambda again: reduce_file(run_dir / "activations.h5", folder / "layout.h5", reduce_settings,
                                              layer=layer, progress=progress, overwrite=again), overwrite)
    title = f"Class atlas: {label}" + (f" · {layer}" if layer else "")
    return _finish(run_dir, folder, model, settings, title, t0, device=device, progress=progress,
                   overwrite=overwrite)


def comparison_atlas(run_dir: str | os.PathLike, class_a: str, class_b: str, model: AtlasModel,
                     settings: SubAtlasSettings | None = None, *, layer: str | None = None,
                     device: str = "auto", progress: bool = True, overwrite: bool = False) -> SubAtlasSummary:
    """The comparison atlas of ``class_a`` (right) and ``class_b`` (left) in ``RUN/compare/<a>--<b>/``
    (``layer`` and ``overwrite`` as in :func:`class_atlas`). Its tiles manifest records which class lies on
    which side (``comparison``: ``{"left": {"index", "name"}, "right": {...}, "x": ...}``), which
    the viewer draws as an axis."""
    from atlas.stages.reduce import comparison_file, resolve_class

    settings = settings or SubAtlasSettings()
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    a, b = resolve_class(class_a), resolve_class(class_b)
    folder = compare_folder(_root(run_dir, layer), _name_of(model, a), _name_of(model, b))
    folder.mkdir(parents=True, exist_ok=True)
    keep_or_replace(lambda again: comparison_file(run_dir / "activations.h5", folder / "layout.h5", a, b,
                                                  layer=layer, top_n=settings.class_top_n, overwrite=again), overwrite)
    title = f"Comparison: {_name_of(model, b)} (left) vs {_name_of(model, a)} (right); x = attribution difference"
    title += f" · {layer}" if layer else ""
    axis = {"left": {"index": b, "name": _name_of(model, b)}, "right": {"index": a, "name": _name_of(model, a)},
            "x": COMPARISON_AXIS}
    return _finish(run_dir, folder, model, settings, title, t0, device=device, progress=progress,
                   overwrite=overwrite, comparison=axis)


def _name_of(model: AtlasModel, index: int) -> str:
    """The class's name (folders and titles use names: the viewer skips folders named by digits)."""
    names = model.class_names
    return names[index] if index < len(names) else f"class {index}"


def _finish(run_dir: Path, folder: Path, model: AtlasModel, settings: SubAtlasSettings, title: str,
            t0: float, *, device: str, progress: bool, overwrite: bool = False,
            comparison: dict[str, Any] | None = None) -> SubAtlasSummary:
    """Grid, render and tile a sub-atlas whose ``layout.h5`` is written (``overwrite``: replace
    the outputs made with other settings; ``comparison``: a comparison's axis, for the manifest)."""
    from atlas.stages.grid import GridSettings, grid_file
    from atlas.stages.render import render_cells
    from atlas.stages.tiles import build_tiles
    from atlas.store.layout import read_layout

    grid_settings = GridSettings(sizes=settings.sizes, min_count=settings.min_count)
    grid = keep_or_replace(lambda again: grid_file(
        run_dir / "activations.h5", folder / "layout.h5", folder / "cells.h5", grid_settings, progress=progress,
        allow_empty=True,  # a class too small for the grid gives empty levels, not an error
        overwrite=again), overwrite)
    rendered = keep_or_replace(lambda again: render_cells(
        folder / "cells.h5", folder / "icons.h5", model, icon_size=settings.icon_size, steps=settings.steps,
        batch_size=settings.batch_size, device=device, progress=progress, objective=settings.objective,
        icon_view=settings.icon_view, lr=settings.lr, overwrite=again), overwrite)
    tiles = keep_or_replace(lambda again: build_tiles(
        folder / "cells.h5", folder / "icons.h5", folder / "tiles", activations_path=run_dir / "activations.h5",
        title=title, comparison=comparison, progress=progress, class_names=model.class_names, overwrite=again),
        overwrite)
    rows = int(read_layout(folder / "layout.h5").valid.sum())
    # the cells' hash holds the layout's, so a rewritten layout is never "current" here
    current = grid.up_to_date and rendered.up_to_date and not (tiles.tiles_written or tiles.metadata_written)
    return SubAtlasSummary(folder, rows, sum(rendered.rendered.values()), time.perf_counter() - t0, up_to_date=current)


__all__ = ["COMPARISON_AXIS", "SubAtlasSettings", "SubAtlasSummary", "class_atlas", "class_folder", "compare_folder",
           "comparison_atlas", "slug"]
