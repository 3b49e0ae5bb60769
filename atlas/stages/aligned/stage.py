"""An aligned atlas of a run, step by step: collect (a side the run cannot serve), fit the maps,
lay both sides out together, then grid, render and tile each side as an atlas of its own.

Each step is the stages' own function (:func:`~atlas.stages.collect.stage.collect`,
:func:`~atlas.stages.grid.grid_file`, :func:`~atlas.stages.render.render_cells`,
:func:`~atlas.stages.tiles.build_tiles`) or this package's (:func:`~atlas.stages.aligned.fit.fit_maps_file`,
:func:`~atlas.stages.aligned.layout.joint_layout`), and skips what is complete and current, so a
second run does nothing, and a run cut off resumes at the step (and inside it, where the step
resumes: collect by block, the layout by chunk, render by batch) where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from atlas.models import AtlasModel
from atlas.stages.aligned.fit import FitSummary, fit_maps_file
from atlas.stages.aligned.layout import joint_layout
from atlas.stages.aligned.settings import AlignedSettings, folder_name
from atlas.stages.aligned.sides import (
    RunModel,
    SidePlan,
    check_grids,
    load_side_model,
    plan_side,
    run_model,
    same_model,
)
from atlas.store.lineage import keep_or_replace

if TYPE_CHECKING:
    from atlas.stages.collect.stage import CollectSummary

log = logging.getLogger(__name__)

SIDES = ("a", "b")


class StepCallback(Protocol):
    """Called after each step of :func:`aligned_atlas` with the step's name (``"fit"``,
    ``"layout"``, ``"render a"``, ...) and its one-line summary (raise from it to stop the run)."""

    def __call__(self, step: str, summary: str) -> None: ...


@dataclass
class AlignedSummary:
    """What building an aligned atlas did.

    ``steps`` maps each step run to whether it did any work (False: it was complete and current).
    """

    folder: Path
    name: str
    labels: dict[str, str]
    fit: FitSummary
    rows: int
    icons: dict[str, int] = field(default_factory=dict)
    steps: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def up_to_date(self) -> bool:
        return not any(self.steps.values())

    def describe(self) -> str:
        where = f"{self.folder.parent.name}/{self.folder.name}"
        sides = f"a = {self.labels['a']}, b = {self.labels['b']}"
        r2 = (f"held-out R^2 a->b {self.fit.a_to_b.total:.3f} (per channel {self.fit.a_to_b.mean_per_channel:.3f}), "
              f"b->a {self.fit.b_to_a.total:.3f} (per channel {self.fit.b_to_a.mean_per_channel:.3f})")
        if self.up_to_date:
            return f"{where} ({sides}; {self.rows} rows a side; {r2}) is complete and current; nothing to do"
        done = ", ".join(s for s, worked in self.steps.items() if worked)
        return (f"{where}: {sides}; {self.rows} rows a side; {r2}; {self.icons.get('a', 0)} + "
                f"{self.icons.get('b', 0)} icons rendered; did {done} in {self.seconds:.0f} s")


def aligned_folder(run_dir: str | os.PathLike, name: str) -> Path:
    """``RUN/aligned/<name>``, the folder of the aligned atlas ``name``."""
    return Path(run_dir) / "aligned" / folder_name(name)


def aligned_atlas(
    run_dir: str | os.PathLike,
    settings: AlignedSettings,
    model_a: AtlasModel | None = None,
    model_b: AtlasModel | None = None,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    source: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    on_step: StepCallback | None = None,
) -> AlignedSummary:
    """The aligned atlas ``settings.name`` of the run ``run_dir``, in ``RUN/aligned/<name>/``::

        fit.json  maps.h5  joint.umap.pkl
        a/  [activations.h5]  layout.h5  cells.h5  icons.h5  tiles/
        b/  [activations.h5]  layout.h5  cells.h5  icons.h5  tiles/

    1. collect: a side that is not the run's model at a layer the run collected gets its rows
       collected into ``<side>/activations.h5`` with the run's collect settings
       (:mod:`atlas.stages.aligned.sides`; ``source`` replaces the run's recorded source,
       ``batch_size`` and ``workers`` are the collect's loader settings).
    2. fit: the linear maps each way and their held-out R^2 (``maps.h5``, ``fit.json``;
       :mod:`atlas.stages.aligned.fit`), after checking that the sides' rows line up.
    3. layout: one UMAP of both sides' joint vectors, split into ``a/layout.h5`` and
       ``b/layout.h5`` (:mod:`atlas.stages.aligned.layout`).
    4. each side: grid of its own activations, icons of its own model and layer, tiles whose
       manifest names the other side (``aligned``: name, side, label, peer, peer_label).

    ``model_a`` and ``model_b`` render (and, where a side is collected, collect) each side; None
    loads the side's model (the run's with ``weights``). ``overwrite`` replaces the files made with
    other settings (the later steps follow); without it they raise
    :class:`~atlas.store.common.SettingsChangedError`, touching nothing. ``on_step(step, summary)``
    is called after each step.
    """
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_acts = run_dir / "activations.h5"
    folder = aligned_folder(run_dir, settings.name)
    run = run_model(run_acts)
    models = _side_models(settings, run, model_a, model_b, weights=weights, device=device)
    plans = {s: plan_side(s, settings.side(s), models[s], run, run_acts, folder) for s in SIDES}
    check_grids(plans, models)
    folder.mkdir(parents=True, exist_ok=True)
    steps: dict[str, bool] = {}

    def step(name: str, worked: bool, summary: str) -> None:
        steps[name] = worked
        log.info("aligned %s: %s: %s", settings.name, name, summary)
        if on_step is not None:
            on_step(name, summary)

    for s in SIDES:
        plan = plans[s]
        if plan.collect_reason is not None:
            done = _collect_side(plan, models[s], source or run.source, run.precision, device=device,
                                 batch_size=batch_size, workers=workers, progress=progress, overwrite=overwrite)
            step(f"collect {s}", not done.up_to_date, done.describe())
    a, b = plans["a"].rows, plans["b"].rows
    fit = keep_or_replace(lambda again: fit_maps_file(
        a, b, folder / "maps.h5", holdout=settings.holdout, ridge=settings.ridge, seed=settings.seed,
        fit_json=folder / "fit.json", overwrite=again, progress=progress), overwrite)
    step("fit", not fit.up_to_date, fit.describe())
    layout = keep_or_replace(lambda again: joint_layout(
        a, b, folder / "maps.h5", folder / "a" / "layout.h5", folder / "b" / "layout.h5", settings.reduce_settings(),
        balance=settings.balance, mode=settings.layout, name=settings.name, overwrite=again, progress=progress), overwrite)
    step("layout", not layout.up_to_date, layout.describe())
    icons = {s: _side_atlas(folder, plans, s, models[s], settings, step, device=device, progress=progress,
                            overwrite=overwrite) for s in SIDES}
    summary = AlignedSummary(folder, settings.name, {s: plans[s].rows.label for s in SIDES}, fit,
                             fit.rows, icons, steps, time.perf_counter() - t0)
    log.info("%s", summary.describe())
    return summary


def _side_models(settings: AlignedSettings, run: RunModel, model_a: AtlasModel | None, model_b: AtlasModel | None, *,
                 weights: str | os.PathLike | None, device: str) -> dict[str, AtlasModel]:
    """The model of each side: the one given, else loaded (one model for both sides when they are one)."""
    given = {"a": model_a, "b": model_b}
    models: dict[str, AtlasModel] = {}
    for s in SIDES:
        if given[s] is not None:
            models[s] = given[s]
            continue
        same = [o for o in models if same_model(settings.side(o), settings.side(s), run)]
        models[s] = models[same[0]] if same else load_side_model(settings.side(s), run, run_weights=weights,
                                                                 device=device)
    return models


def _collect_side(plan: SidePlan, model: AtlasModel, source: str | os.PathLike, precision: str, *, device: str,
                  batch_size: int, workers: int | None, progress: bool, overwrite: bool) -> CollectSummary:
    """Collect one side's layer into its own folder, with the run's collect settings."""
    from atlas.stages.collect.stage import collect

    out = plan.rows.activations
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("side %s: collecting %s into %s, since %s", plan.rows.key, plan.rows.layer, out, plan.collect_reason)
    return keep_or_replace(lambda again: collect(
        str(source), out, model, plan.collect_settings, weights=plan.weights, random_init=plan.random_init,
        device=device, batch_size=batch_size, workers=workers, progress=progress, overwrite=again,
        precision=precision), overwrite)


def _side_atlas(folder: Path, plans: dict[str, SidePlan], s: str, model: AtlasModel, settings: AlignedSettings,
                step: StepCallback, *, device: str, progress: bool, overwrite: bool) -> int:
    """Grid, render and tile side ``s`` (its layout written); returns the icons rendered now."""
    from atlas.stages.grid import GridSettings, grid_file
    from atlas.stages.render import render_cells
    from atlas.stages.tiles import build_tiles

    side, acts = folder / s, plans[s].rows.activations
    peer = "b" if s == "a" else "a"
    grid = keep_or_replace(lambda again: grid_file(
        acts, side / "layout.h5", side / "cells.h5", GridSettings(sizes=settings.sizes, min_count=settings.min_count),
        progress=progress, overwrite=again), overwrite)
    step(f"grid {s}", not grid.up_to_date, grid.describe())
    rendered = keep_or_replace(lambda again: render_cells(
        side / "cells.h5", side / "icons.h5", model, icon_size=settings.icon_size, steps=settings.steps,
        batch_size=settings.batch_size, device=device, progress=progress, objective=settings.objective,
        icon_view=settings.icon_view, lr=settings.lr, overwrite=again), overwrite)
    step(f"render {s}", not rendered.up_to_date, rendered.describe())
    aligned = {"name": settings.name, "side": s, "label": plans[s].rows.label,
               "peer": os.path.relpath(folder / peer / "tiles", side / "tiles"), "peer_label": plans[peer].rows.label}
    tiles = keep_or_replace(lambda again: build_tiles(
        side / "cells.h5", side / "icons.h5", side / "tiles", activations_path=acts,
        title=f"Aligned {settings.name}, side {s}: {plans[s].rows.label} (side {peer}: {plans[peer].rows.label})",
        aligned=aligned, class_names=model.class_names, progress=progress, overwrite=again), overwrite)
    step(f"tiles {s}", bool(tiles.tiles_written or tiles.metadata_written), tiles.describe())
    return sum(rendered.rendered.values())


__all__ = ["AlignedSummary", "StepCallback", "aligned_atlas", "aligned_folder"]
