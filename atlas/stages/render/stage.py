"""The render stage over files: ``cells.h5`` -> ``icons.h5`` (:func:`render_cells`), batch by
batch, resumable, in this process or on Dask workers."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.models import AtlasModel, resolve_device
from atlas.optvis.transform import Transform
from atlas.stages.render.batch import IconBatch, IconBatchResult, compile_model, render_icon_batch
from atlas.stages.render.dask import run_render_batches
from atlas.stages.render.directions import whitening_from_activations
from atlas.stages.render.parents import levels_with_parents, start_from_parents
from atlas.stages.render.settings import RenderSettings
from atlas.store.cells import CellLevel, cells_attrs, level_digest, read_cells
from atlas.store.icons import INPUT_KEYS, KIND, IconsFile
from atlas.store.lineage import compare_input, recorded_inputs, refuse_other_settings, require_current, root_attrs

if TYPE_CHECKING:
    from distributed import Client

    from atlas.runtime.distributed import ModelSpec, Scheduler

log = logging.getLogger(__name__)


@dataclass
class RenderSummary:
    """What a render run did."""

    output: Path
    rendered: dict[int, int] = field(default_factory=dict)
    total: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = False
    up_to_date: bool = False
    mean_cossim: float = float("nan")
    #: grid size -> mean cosine to the cell direction of the icons rendered now at that level
    level_cossim: dict[int, float] = field(default_factory=dict)
    #: grid size -> wall seconds from the start of the level's batches to its last icon written
    level_seconds: dict[int, float] = field(default_factory=dict)
    #: seconds spent on the amortised start's network now (training it, or reading it back)
    start_seconds: float = 0.0

    def describe(self) -> str:
        if self.up_to_date and not self.complete:
            sizes = ", ".join(f"{s}x{s}" for s in self.total)
            return f"the {sizes} icons of {self.output} are complete and current; nothing to do"
        if self.up_to_date:
            return f"{self.output} is complete and current; nothing to do"
        n = sum(self.rendered.values())
        rate = n / self.seconds * 60 if self.seconds > 0 else float("nan")
        levels = ", ".join(f"{s}x{s}: {self.rendered.get(s, 0)}/{t}" for s, t in self.total.items())
        state = "complete" if self.complete else "incomplete (rerun to render the other levels)"
        per_level = ", ".join(f"{s}x{s} {c:.2f}" for s, c in self.level_cossim.items())
        per_level = f" ({per_level})" if len(self.level_cossim) > 1 else ""
        times = ", ".join(f"{s}x{s} {t:.0f} s" for s, t in self.level_seconds.items())
        times = f"; per level {times}" if len(self.level_seconds) > 1 else ""
        start = f"; the amortised start {self.start_seconds:.0f} s" if self.start_seconds else ""
        return (f"rendered {n} icons ({levels}) in {self.seconds:.1f} s ({rate:.1f} icons/min, mean cosine "
                f"to the cell direction {self.mean_cossim:.2f}{per_level}{start}{times}); {self.output} is {state}")


def _batches(store: IconsFile, sizes: Sequence[int], counts: Mapping[int, int],
             batch_size: int) -> list[tuple[int, np.ndarray]]:
    """The pending work as (grid size, rows) batches of a fixed partition of each level.

    Rows ``[k * batch_size, (k + 1) * batch_size)`` of a level always form batch k, and a batch
    is written at once, so a resumed render optimizes exactly the batches an uninterrupted one
    would (the cells of a batch share float rounding; see the module docstring).
    """
    out = []
    for s in sizes:
        done = np.ones(counts[s], bool)
        done[store.pending(s)] = False
        for start in range(0, counts[s], batch_size):
            rows = np.flatnonzero(~done[start:start + batch_size]) + start
            if len(rows):
                out.append((s, rows))
    return out


def render_cells(
    cells_path: str | os.PathLike,
    icons_path: str | os.PathLike,
    model: AtlasModel | ModelSpec | str,
    settings: RenderSettings | None = None,
    *,
    whiten: np.ndarray | bool | None = None,
    transforms: Sequence[Transform] | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    overwrite: bool = False,
    compile: bool | str = False,
    scheduler: str | Scheduler | Client | None = None,
    **overrides: Any,
) -> RenderSummary:
    """The render stage: an icon for every cell of ``cells.h5``, written to ``icons.h5``.

    Args:
        cells_path: a complete ``cells.h5`` of the grid stage.
        icons_path: where to write (layout: :mod:`atlas.store.icons`); resumed when it holds a
            render with the same settings, keeping the icons of every level whose cells are
            unchanged (a level new to the grid is added, one whose cells changed is rendered
            again). A render with other settings is left as it is and
            :class:`~atlas.store.common.SettingsChangedError` names the changes, unless
            ``overwrite``; cells made from a layout that changed since raise
            :class:`~atlas.store.common.StaleInputError` (run grid first).
        model: the model the cells were collected from (checked against ``cells.h5``); with a
            ``scheduler``, a name or :class:`atlas.runtime.distributed.ModelSpec` that every worker loads.
        settings: what to render and how (:class:`RenderSettings`: the levels, icon size, steps,
            learning rates, objective, start, ...; default: its defaults). ``overrides`` replace
            its fields, e.g. ``render_cells(cells, icons, model, steps=64, levels=[20])``.
        whiten: a (C, C) inverse covariance of the layer's activations
            (:func:`atlas.optvis.whitening_matrix`), or True to compute it from the
            ``activations.h5`` the cells came from (:func:`whitening_from_activations`), or False;
            directions become ``v @ whiten`` (the paper's icons are whitened). Default: the
            settings' ``whiten``.
        transforms: what the model sees of an icon each step; default: the transforms of the
            settings' ``icon_view`` (:func:`icon_view_transforms`).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...; the model is moved there.
        progress: show a tqdm bar (icons/s).
        overwrite: start over even if ``icons_path`` could be resumed or holds other settings.
        compile: run the network under ``torch.compile`` (True: the inductor backend; a string:
            that backend); falls back to eager with a WARNING when compiling fails. In-process only.
        scheduler: render the batches as Dask tasks (:mod:`atlas.runtime.distributed`): ``"local:N"``,
            a scheduler address, an :class:`atlas.runtime.distributed.Scheduler` or a ``distributed.Client``.
            Each worker loads the model itself on its device (``device`` is the workers'), renders
            whole batches, and this process writes them into ``icons.h5`` as they finish.

    Returns:
        a :class:`RenderSummary`.
    """
    t0 = time.perf_counter()
    settings = dataclasses.replace(settings or RenderSettings(), **overrides)  # bad values fail here, before any work
    transforms = settings.transforms(transforms)
    model, model_spec = _model_for(model, scheduler, device)
    layer, all_levels, cattrs = _read_cells(cells_path, model)
    asked_start, n_cells = settings.start, sum(len(lv) for lv in all_levels.values())
    icons_path = Path(icons_path)
    settings = settings.resolve(n_cells, None if overwrite else _start_in(icons_path))
    if asked_start != settings.start:
        log.info("start=%r: %s, for the %d cells of %s", asked_start, settings.start, n_cells, cells_path)
    wanted, parent_of = levels_with_parents(sorted(all_levels), _asked_levels(cells_path, all_levels, settings),
                                            settings.start)
    whiten = _whitening(settings.whiten if whiten is None else whiten, cells_path, cattrs, layer)
    hashed = settings.hashed(str(cattrs.get("settings_hash", "")), model.name, layer, whiten=whiten,
                             transforms=transforms)
    total = {s: len(all_levels[s]) for s in wanted}
    if not overwrite and _is_current(icons_path, hashed, cells_path):
        log.info("%s is complete and current; skipping render", icons_path)
        return RenderSummary(icons_path, total=total, up_to_date=True, complete=True)

    where = _place_model(model, device) if model_spec is None else f"Dask workers ({model_spec.device})"
    warm = bool(parent_of) or settings.start == "amortised"
    attrs = _file_attrs(model.name, layer, cells_path, settings, hashed, whiten=whiten, transforms=transforms,
                        warm=warm)
    store = IconsFile.prepare(icons_path, {s: lv.cell_id for s, lv in all_levels.items()}, settings.icon_size, hashed,
                              attrs, digests={s: level_digest(lv.cell_id, lv.direction) for s, lv in all_levels.items()},
                              inputs={"cells": cells_path}, overwrite=overwrite)
    work = _batches(store, wanted, total, settings.batch_size)
    summary = RenderSummary(icons_path, rendered={s: 0 for s in wanted}, total=total)
    if not work:
        # the levels asked for are done (others, if any, are left to a run that asks for them)
        log.info("levels %s of %s are complete and current; skipping render", list(wanted), icons_path)
        summary.up_to_date = True
        summary.complete = store.finish()
        return summary
    n_work = sum(len(rows) for _, rows in work)
    _log_plan(n_work, layer, wanted, where, settings, warm=warm)
    template = _batch_template(layer, settings, whiten=whiten, transforms=transforms)
    net = None
    if settings.start == "amortised":
        t_start = time.perf_counter()
        net = _amortised_start(model, model_spec, layer, all_levels, icons_path, hashed, settings, transforms, whiten,
                               overwrite=overwrite, progress=progress)
        summary.start_seconds = time.perf_counter() - t_start

    level_started: dict[int, float] = {}

    def level_batches(size: int) -> list[IconBatch]:
        """The pending batches of level ``size``; with a parent level (rendered by now), each cell
        starts from its parent's icon as stored."""
        level_started[size] = time.perf_counter()
        batches = _level_batches(template, size, all_levels[size], work)
        if net is not None:
            from atlas.stages.render.amortised import start_from_network

            return start_from_network(batches, net, steps=settings.warm_steps, lr=settings.refine_lr,
                                      shift=settings.amortise_shift)
        parent = parent_of.get(size)
        if parent is None:
            return batches
        return start_from_parents(batches, icons_path, all_levels[size], all_levels[parent],
                                  steps=settings.warm_steps, lr=settings.refine_lr)

    writer = _Writer(store, summary, tqdm(total=n_work, unit="icon", desc=f"render {layer}", disable=not progress))
    try:
        if model_spec is not None:
            _render_on_dask(scheduler, model_spec, wanted, level_batches, writer)
        else:
            _render_here(model, layer, settings, wanted, level_batches, writer, compile=compile)
    finally:
        writer.bar.close()
    summary.complete = store.finish()
    summary.seconds = time.perf_counter() - t0
    summary.level_seconds = {s: writer.last_write[s] - level_started[s] for s in wanted if s in writer.last_write}
    writer.summarize()
    log.info("%s", summary.describe())
    return summary


def _amortised_start(model: AtlasModel, model_spec: ModelSpec | None, layer: str, levels: Mapping[int, CellLevel],
                     icons_path: Path, hashed: Mapping[str, Any], settings: RenderSettings, transforms: Sequence[Transform],
                     whiten: np.ndarray | None, *, overwrite: bool, progress: bool) -> Any:
    """The network every cell of this render starts from (``start="amortised"``): kept beside
    ``icons.h5`` and keyed by the render's settings and every level's cells, trained here when
    there is none (with a ``scheduler``, on this machine's CPU; the batches then carry its icons)."""
    from atlas.stages.render.amortised import amortised_start, start_file
    from atlas.stages.render.settings import reads_mean
    from atlas.store.common import settings_hash

    key = settings_hash({"settings": hashed, "levels": {str(s): level_digest(lv.cell_id, lv.direction)
                                                        for s, lv in sorted(levels.items())}})
    trainer = model if model_spec is None else model_spec.load("cpu")
    return amortised_start(trainer, layer, [lv.direction for lv in levels.values()], start_file(icons_path), key,
                           transforms=transforms, icon_size=settings.icon_size, steps=settings.amortise_steps,
                           lr=settings.amortise_lr, batch_size=settings.batch_size, cossim_pow=settings.cossim_pow,
                           spatial_mean=reads_mean(settings.objective), whiten=whiten, seed=settings.seed,
                           overwrite=overwrite, progress=progress)


def _model_for(model: AtlasModel | ModelSpec | str, scheduler: Any,
               device: str | torch.device) -> tuple[AtlasModel, ModelSpec | None]:
    """The model the client checks the cells against, and with a ``scheduler`` the spec every
    worker loads (the client then loads the architecture alone, on the CPU: it checks only names
    and layers)."""
    if scheduler is not None:
        from atlas.runtime.distributed import ModelSpec

        spec = ModelSpec.of(model, device=device)
        return spec.for_shapes().load("cpu"), spec
    if not isinstance(model, AtlasModel):
        raise ValueError(f"render_cells needs an AtlasModel here (got {type(model).__name__}); a model name or "
                         "ModelSpec is for scheduler=...")
    return model, None


def _read_cells(cells_path: str | os.PathLike, model: AtlasModel) -> tuple[str, dict[int, CellLevel], dict[str, Any]]:
    """``(layer, {grid size: cells}, attributes)`` of a current ``cells.h5`` made with ``model``;
    an error naming the fix for stale cells, another model or a layer the model does not have."""
    cattrs = cells_attrs(cells_path)
    require_current(cells_path)  # cells made from a layout that changed since: StaleInputError (run grid)
    if cattrs.get("model") and cattrs["model"] != model.name:
        raise ValueError(f"{cells_path} was collected with model {cattrs['model']!r} but the model given is "
                         f"{model.name!r}; render with --model {cattrs['model']}")
    layer = str(cattrs["layer"])
    model.layer(layer)  # unknown layer -> a helpful error before any work
    return layer, read_cells(cells_path), cattrs


def _asked_levels(cells_path: str | os.PathLike, all_levels: Mapping[int, CellLevel],
                  settings: RenderSettings) -> list[int]:
    """The grid sizes the settings ask for (all when none), each one a level of the file."""
    asked = sorted(settings.levels) if settings.levels else sorted(all_levels)
    unknown = sorted(set(asked) - set(all_levels))
    if unknown:
        raise ValueError(f"{cells_path} has grid sizes {sorted(all_levels)}, not {unknown}; pick from those")
    return asked


def _whitening(whiten: np.ndarray | bool | None, cells_path: str | os.PathLike, cattrs: Mapping[str, Any],
               layer: str) -> np.ndarray | None:
    """The whitening matrix: ``whiten`` itself, computed from the cells' ``activations.h5`` when
    True, or None for none."""
    if whiten is None or whiten is False:
        return None
    if whiten is not True:
        return whiten
    source = cattrs.get("source")
    if not source or not Path(source).is_file():
        raise ValueError(f"whiten=True needs the activations.h5 that {cells_path} was built from ({source!r} "
                         "is not there); pass the matrix instead: whiten=whitening_from_activations(PATH)")
    log.info("computing the whitening matrix of %s from %s", layer, source)
    return whitening_from_activations(source, layer)


def _is_current(icons_path: Path, hashed: Mapping[str, Any], cells_path: str | os.PathLike) -> bool:
    """Whether ``icons_path`` is a complete render of these settings from these cells. Other
    settings raise :class:`~atlas.store.common.SettingsChangedError`, touching nothing; a render
    whose cells changed since is not current."""
    found = root_attrs(icons_path)
    if found is None or found.get("kind") != KIND:
        return False
    same = not refuse_other_settings(icons_path, found, hashed, stage="render", input_keys=INPUT_KEYS)
    recorded = (recorded_inputs(found) or {}).get("cells")
    return same and bool(found.get("complete")) and compare_input(recorded, root_attrs(cells_path)) != "changed"


def _place_model(model: AtlasModel, device: str | torch.device) -> torch.device:
    """Move ``model`` to ``device`` (``"auto"``: CUDA when present); returns where it is."""
    dev = resolve_device(device)
    if model.device != dev:
        log.info("moving the model to %s", dev)
        model.to(dev)
    return dev


def _start_in(icons_path: Path) -> str | None:
    """The start of the render in ``icons_path`` (``"cold"`` for files from before the setting), or
    None when there is no readable render there."""
    attrs = root_attrs(icons_path)
    if not attrs or attrs.get("kind") != KIND or "settings_hash" not in attrs:
        return None
    return str(attrs.get("start", "cold"))


def _file_attrs(model: str, layer: str, cells_path: str | os.PathLike, settings: RenderSettings,
                hashed: Mapping[str, Any], *, whiten: np.ndarray | None, transforms: Sequence[Transform],
                warm: bool) -> dict[str, Any]:
    """The readable attributes of ``icons.h5`` (what the viewer and people read; the settings
    themselves are hashed apart)."""
    return dict(model=model, layer=layer, cells=str(cells_path), icon_size=int(settings.icon_size),
                steps=int(settings.steps), attempts=int(settings.attempts), lr=float(settings.lr),
                cossim_pow=float(settings.cossim_pow), seed=int(settings.seed), whiten=whiten is not None,
                transforms=", ".join(repr(t) for t in transforms), cells_settings_hash=hashed["cells_settings_hash"],
                start=settings.start, refine_steps=settings.warm_steps if warm else 0,
                refine_lr=float(settings.refine_lr) if warm else 0.0)


def _log_plan(n_work: int, layer: str, wanted: Sequence[int], where: object, settings: RenderSettings, *,
              warm: bool) -> None:
    how = f"{settings.steps} steps"
    if warm and settings.start == "amortised":
        how = (f"every cell from its icon as the amortised start predicts it, {settings.warm_steps} steps at lr "
               f"{settings.refine_lr}")
    elif warm:
        how = (f"the coarsest level {settings.steps} steps, the others from their parents' icons "
               f"{settings.warm_steps} steps at lr {settings.refine_lr}")
    log.info("rendering %d icons of %s (%s) on %s: %s, best of %d, %d per batch, precision %s", n_work, layer,
             ", ".join(f"{s}x{s}" for s in wanted), where, how, settings.attempts, settings.batch_size,
             settings.precision)


def _batch_template(layer: str, settings: RenderSettings, *, whiten: np.ndarray | None,
                    transforms: Sequence[Transform]) -> IconBatch:
    """An empty batch with everything the batches of this render share."""
    return IconBatch(layer, 0, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 0), np.float32),
                     icon_size=settings.icon_size, steps=settings.steps, attempts=settings.attempts, lr=settings.lr,
                     cossim_pow=settings.cossim_pow, seed=settings.seed, whiten=whiten, transforms=tuple(transforms),
                     precision=settings.precision, border_prior=float(settings.border_prior),
                     objective=settings.objective)


def _level_batches(template: IconBatch, size: int, level: CellLevel,
                   work: Sequence[tuple[int, np.ndarray]]) -> list[IconBatch]:
    """The pending batches of level ``size`` (its cells ``level``), each ``template`` with its rows."""
    return [dataclasses.replace(template, size=size, rows=rows, cell_id=level.cell_id[rows],
                                directions=level.direction[rows].astype(np.float32))
            for s, rows in work if s == size]


class _Writer:
    """Writes each rendered batch into ``icons.h5`` as it comes, counts it in the summary and on
    the progress bar, and keeps its cosines for the summary's per-level means."""

    def __init__(self, store: IconsFile, summary: RenderSummary, bar: tqdm):
        self.store, self.summary, self.bar = store, summary, bar
        self.cossims: dict[int, list[np.ndarray]] = {}
        self.last_write: dict[int, float] = {}

    def __call__(self, result: IconBatchResult) -> None:
        self.store.write(result.size, result.rows, result.icons, result.objective, result.cossim)
        self.last_write[result.size] = time.perf_counter()
        self.summary.rendered[result.size] += len(result.rows)
        self.cossims.setdefault(result.size, []).append(result.cossim)
        self.bar.update(len(result.rows))
        self.bar.set_postfix(cossim=f"{float(np.mean(result.cossim)):.2f}")

    def summarize(self) -> None:
        """The mean cosine of the icons written, over all and per level, into the summary."""
        if not self.cossims:
            return
        per_level = {size: np.concatenate(self.cossims[size]) for size in sorted(self.cossims)}
        self.summary.mean_cossim = float(np.mean(np.concatenate(list(per_level.values()))))
        self.summary.level_cossim = {size: float(np.mean(c)) for size, c in per_level.items()}


def _render_here(model: AtlasModel, layer: str, settings: RenderSettings, sizes: Sequence[int],
                 level_batches: Callable[[int], list[IconBatch]], write: Callable[[IconBatchResult], None], *,
                 compile: bool | str) -> None:
    """Render the levels ``sizes`` in order, batch by batch, in this process (under
    ``torch.compile`` with ``compile``)."""
    runner = model
    if compile:
        runner = compile_model(model, layer, icon_size=settings.icon_size,
                               backend=compile if isinstance(compile, str) else "inductor")
    for size in sizes:
        for batch in level_batches(size):
            write(render_icon_batch(runner, batch))


def _render_on_dask(scheduler: str | Scheduler | Client, spec: ModelSpec, sizes: Sequence[int],
                    level_batches: Callable[[int], list[IconBatch]],
                    write: Callable[[IconBatchResult], None]) -> None:
    """Render the levels ``sizes`` as Dask tasks, level by level (a level's cells may start from
    the one before), writing each batch here as it finishes."""
    from atlas.runtime.distributed import client_for

    with client_for(scheduler) as client:
        for size in sizes:
            run_render_batches(client, spec, level_batches(size), on_batch=write)
