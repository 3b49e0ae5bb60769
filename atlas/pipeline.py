"""Run a pipeline config: each stage in order into one run directory.

Stages are plain functions; this module only wires named artifacts between them (the run
directory holds ``activations.h5``, ``layout.h5``, ``cells.h5``, ...). A stage whose output is
complete for the same settings is skipped by the stage itself; an interrupted stage resumes.
A failure names the command that resumes the run.

When settings change: a stage whose output was made with other settings (a changed key of the
config, or a changed default) stops the run before it touches anything, with
:class:`~atlas.store.common.SettingsChangedError` naming each changed key (old -> new) and the
ways forward. ``overwrite=True`` (``atlas run CONFIG --overwrite``) replaces such outputs; the
stages after one then rebuild from it, as their inputs changed. There is deliberately no config
key for it: left in a config, it would discard finished work on every later run.

A config naming several layers (``[collect] layers``) makes a multi-layer run: collect reads
every layer in one pass into the run's ``activations.h5``, and reduce, grid, render and tiles
run once per layer, each layer's files in ``RUN/layers/<layer>/`` (``layout.h5``, ``cells.h5``,
``icons.h5``, ``tiles/``; :func:`layer_folders`), each skipped or resumed on its own, so a
kill during the third layer's render keeps the first two layers' icons. Each layer's tiles
record the run's layers (``layer_set``), which the viewer shows as a row to switch between.
A single-layer run keeps its files in the run folder itself.

With a scheduler (``[run] scheduler`` or ``scheduler=``), collect and reduce's placement run on
Dask distributed (:mod:`atlas.runtime.distributed`); the connection (or local cluster) is made when the
first of them has work and shared by both. Grid, render and tiles run in this process.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from atlas.config import PipelineConfig, load_config
from atlas.runtime.distributed import Scheduler
from atlas.store.common import SettingsChangedError, StaleInputError
from atlas.store.lineage import keep_or_replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    name: str
    # (config, progress, scheduler, overwrite) -> a one-line summary
    run: Callable[[PipelineConfig, bool, Scheduler | None, bool], str]


def _collect(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.stages.collect.stage import collect

    c = cfg.collect
    summary = collect(
        c.source,
        cfg.run_dir / "activations.h5",
        cfg.model.name,
        c.settings,
        weights=cfg.model.weights or None,
        random_init=cfg.model.random_init,
        device=cfg.run.device,
        batch_size=c.batch_size,
        workers=None if c.workers < 0 else c.workers,
        progress=progress,
        scheduler=scheduler,
        overwrite=overwrite,
    )
    return summary.describe()


def layer_folders(cfg: PipelineConfig) -> list[tuple[str | None, Path]]:
    """Where each layer's reduce, grid, render and tiles files go: ``[(None, RUN)]`` for a
    single-layer run (``None``: the activations file's only layer), ``[(layer, RUN/layers/<layer>)]``
    in the config's order for a multi-layer one."""
    layers = cfg.collect.settings.layers
    if len(layers) == 1:
        return [(None, cfg.run_dir)]
    return [(name, cfg.run_dir / "layers" / name) for name in layers]


def _per_layer(cfg: PipelineConfig, step: Callable[[str | None, Path], str]) -> str:
    """Run ``step(layer, folder)`` for every layer folder; one summary, each line named by its layer."""
    done = []
    for layer, folder in layer_folders(cfg):
        folder.mkdir(parents=True, exist_ok=True)
        if layer is not None:
            log.info("layer %s", layer)
        summary = step(layer, folder)
        done.append(summary if layer is None else f"[{layer}] {summary}")
    return "\n".join(done)


def _reduce(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.stages.reduce import reduce_file

    acts = cfg.run_dir / "activations.h5"
    return _per_layer(cfg, lambda layer, d: reduce_file(
        acts, d / "layout.h5", cfg.reduce, layer=layer, progress=progress, scheduler=scheduler,
        overwrite=overwrite).describe())


def _grid(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.stages.grid import grid_file

    acts = cfg.run_dir / "activations.h5"
    return _per_layer(cfg, lambda layer, d: grid_file(
        acts, d / "layout.h5", d / "cells.h5", cfg.grid, progress=progress, overwrite=overwrite).describe())


def _render(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.models import load_model
    from atlas.stages.render import render_cells

    model = load_model(cfg.model.name, weights=cfg.model.weights or None, random_init=cfg.model.random_init,
                       device=cfg.run.device)
    return _per_layer(cfg, lambda layer, d: render_cells(
        d / "cells.h5", d / "icons.h5", model, cfg.render, device=cfg.run.device, progress=progress,
        overwrite=overwrite).describe())


def _tiles(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.stages.tiles import build_tiles

    t, layers = cfg.tiles, cfg.collect.settings.layers
    multi = len(layers) > 1

    def tiles(layer: str | None, d: Path) -> str:
        title = t.title or None
        if multi and title:
            title = f"{title} · {layer}"
        return build_tiles(
            d / "cells.h5", d / "icons.h5", d / "tiles", activations_path=cfg.run_dir / "activations.h5",
            tile_size=t.tile_size, density_scaling=t.density_scaling, tile_format=t.format,
            examples_per_cell=t.examples, title=title, layer_set=list(layers) if multi else None,
            progress=progress, overwrite=overwrite,
        ).describe()

    return _per_layer(cfg, tiles)


def _classes(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.models import load_model
    from atlas.stages.classes import class_atlas, comparison_atlas

    c = cfg.classes
    if not c.names and not c.compare:
        return "no class atlases configured ([classes] names, compare)"
    model = load_model(cfg.model.name, weights=cfg.model.weights or None, random_init=cfg.model.random_init,
                       device=cfg.run.device)
    done = []
    for layer, _ in layer_folders(cfg):
        done += [class_atlas(cfg.run_dir, n, model, c, layer=layer, device=cfg.run.device, progress=progress,
                             overwrite=overwrite)
                 for n in c.names]
        done += [comparison_atlas(cfg.run_dir, a, b, model, c, layer=layer, device=cfg.run.device,
                                  progress=progress, overwrite=overwrite)
                 for a, b in c.compare]
    return "; ".join(s.describe() for s in done)


def _aligned(cfg: PipelineConfig, progress: bool, scheduler: Scheduler | None, overwrite: bool) -> str:
    from atlas.stages.aligned import aligned_atlas

    if not cfg.aligned:
        return "no aligned atlases configured ([[aligned]])"
    c = cfg.collect
    done = [aligned_atlas(cfg.run_dir, settings, weights=cfg.model.weights or None, device=cfg.run.device,
                          progress=progress, overwrite=overwrite, source=c.source, batch_size=c.batch_size,
                          workers=None if c.workers < 0 else c.workers)
            for settings in cfg.aligned]
    return "; ".join(s.describe() for s in done)


STAGES: list[Stage] = [
    Stage("collect", _collect),
    Stage("reduce", _reduce),
    Stage("grid", _grid),
    Stage("render", _render),
    Stage("tiles", _tiles),
    Stage("classes", _classes),
    Stage("aligned", _aligned),
]


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


#: Settings whose config key is not ``[stage] name``.
_CONFIG_KEYS = {
    "collect": {"model": "[model] name", "weights": "[model] weights", "random_init": "[model] random_init",
                "source": "[collect] source"},
    "render": {"transforms": "[render] icon_view"},
    "tiles": {"tile_format": "[tiles] format", "examples_per_cell": "[tiles] examples"},
}


def _config_keys(stage: str, changes: dict) -> dict[str, str]:
    special = _CONFIG_KEYS.get(stage, {})
    return {k: special.get(k, f"[{stage}] {k.removeprefix(stage + '.')}") for k in changes}


def run_pipeline(
    config: str | os.PathLike | PipelineConfig,
    *,
    only: str | None = None,
    start: str | None = None,
    progress: bool = True,
    report: Callable[[str, str], None] | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Run the stages of ``config`` (a path or a loaded config); returns each stage's summary.

    ``only`` runs that stage alone, ``start`` that stage and every one after it; giving both is
    an error. ``report(stage, summary)`` is called after each stage (the CLI prints it). ``scheduler``
    (a Dask scheduler address, ``"local"`` or ``"local:N"``) replaces the config's
    ``[run] scheduler``. A stage whose output was made with other settings raises
    :class:`~atlas.store.common.SettingsChangedError` (nothing touched; the message names the
    changed keys), unless ``overwrite``: then that output is replaced and the later stages
    follow. Outputs of unchanged settings are kept either way.
    """
    cfg = config if isinstance(config, PipelineConfig) else load_config(config)
    names = stage_names()
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            raise ValueError(f"{flag} {value!r} is not a stage; stages: {', '.join(names)}")
    if only is not None and start is not None:
        raise ValueError(f"--only {only} and --from {start} together: give one, --only to run one stage, "
                         "--from to run a stage and every one after it")
    todo = [s for s in STAGES if (only is None or s.name == only)]
    if start is not None:
        todo = todo[names.index(start):]
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    spec = scheduler or cfg.run.scheduler
    sched = Scheduler(spec) if spec else None  # connects when a stage first needs it
    summaries: dict[str, str] = {}
    try:
        for stage in todo:
            log.info("stage %s", stage.name)
            try:
                summaries[stage.name] = keep_or_replace(
                    lambda again, stage=stage: stage.run(cfg, progress, sched, again), overwrite)
            except SettingsChangedError as e:
                raise e.for_config(cfg.path, _config_keys(stage.name, e.changes)) from None
            except StaleInputError:
                raise
            except BaseException:
                resume = f"atlas run {shlex.quote(str(cfg.path))} --from {stage.name}"
                log.error("stage %s did not finish; resume with: %s", stage.name, resume)
                raise
            if report is not None:
                report(stage.name, summaries[stage.name])
    finally:
        if sched is not None:
            sched.close()
    return summaries


def run_dir_of(config: str | os.PathLike) -> Path:
    return load_config(config).run_dir
