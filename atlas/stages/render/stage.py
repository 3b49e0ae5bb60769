"""The render stage over files: ``cells.h5`` -> ``icons.h5`` (:func:`render_cells`), batch by
batch, resumable, in this process or on Dask workers."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from atlas.models import AtlasModel, resolve_device
from atlas.optvis.transform import Transform
from atlas.stages.render.batch import IconBatch, IconBatchResult, compile_model, render_icon_batch
from atlas.stages.render.directions import whitening_from_activations
from atlas.stages.render.parents import parent_rows
from atlas.stages.render.settings import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_COSSIM_POW,
    DEFAULT_ICON_OBJECTIVE,
    DEFAULT_ICON_SIZE,
    DEFAULT_ICON_VIEW,
    DEFAULT_LR,
    DEFAULT_REFINE_LR,
    DEFAULT_REFINE_STEPS,
    DEFAULT_START,
    DEFAULT_STEPS,
    check_render_settings,
)
from atlas.store.cells import cells_attrs, level_digest, read_cells
from atlas.store.icons import INPUT_KEYS, KIND, IconsFile, read_icons
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
        return (f"rendered {n} icons ({levels}) in {self.seconds:.1f} s ({rate:.1f} icons/min, mean cosine "
                f"to the cell direction {self.mean_cossim:.2f}{per_level}); {self.output} is {state}")


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


def render_settings(
    cells_hash: str, model: str, layer: str, *, icon_size: int, steps: int, attempts: int, lr: float,
    cossim_pow: float, seed: int, whiten: np.ndarray | None, transforms: Sequence[Transform],
    objective: str = "center",
) -> dict[str, Any]:
    """The settings hashed into ``icons.h5`` (batch size and device are not: they do not change icons)."""
    whiten_hash = None
    if whiten is not None:
        whiten_hash = hashlib.sha256(np.ascontiguousarray(whiten, np.float32).tobytes()).hexdigest()[:16]
    return {
        "cells_settings_hash": cells_hash, "model": model, "layer": layer, "icon_size": int(icon_size),
        "steps": int(steps), "attempts": int(attempts), "lr": float(lr), "cossim_pow": float(cossim_pow),
        "seed": int(seed), "whiten": whiten_hash, "transforms": [repr(t) for t in transforms],
        "param": "fft_image(sd=0.01, decay_power=1, decorrelate=True)",
        "objective": "directions(neuron, center)" if objective == "center" else "directions(mean)",
    }


def render_cells(
    cells_path: str | os.PathLike,
    icons_path: str | os.PathLike,
    model: AtlasModel | ModelSpec | str,
    *,
    levels: Sequence[int] | None = None,
    icon_size: int = DEFAULT_ICON_SIZE,
    steps: int = DEFAULT_STEPS,
    attempts: int = DEFAULT_ATTEMPTS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    cossim_pow: float = DEFAULT_COSSIM_POW,
    whiten: np.ndarray | bool | None = None,
    transforms: Sequence[Transform] | None = None,
    icon_view: str = DEFAULT_ICON_VIEW,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    precision: str = "fp32",
    border_prior: float = 0.0,
    objective: str = DEFAULT_ICON_OBJECTIVE,
    start: str = DEFAULT_START,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    refine_lr: float = DEFAULT_REFINE_LR,
    compile: bool | str = False,
    scheduler: str | Scheduler | Client | None = None,
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
        levels: grid sizes to render now (default all); the file always has rows for all.
        icon_size: icon side in pixels (default 80, as in the paper).
        steps: optimizer steps per attempt (default 256; the paper: 1024).
        attempts: renders per cell, the one with the highest objective kept (default 1; the paper: 4).
        batch_size: cells optimized together (default 32; larger on a GPU). Not part of the
            settings hash (see the module docstring for what it changes).
        lr: Adam learning rate (default 0.05).
        cossim_pow: exponent of ``max(cos, 0.1)`` in the objective (default 4; 0 = plain dot product).
        whiten: optional (C, C) inverse covariance of the layer's activations
            (:func:`atlas.optvis.whitening_matrix`), or True to compute it from the
            ``activations.h5`` the cells came from (:func:`whitening_from_activations`);
            directions become ``v @ whiten`` (the paper's icons are whitened). Default: off.
        transforms: default :func:`icon_view_transforms` of ``icon_view``.
        icon_view: ``"whole"`` (default: the model sees the whole icon, 78 px of 80), ``"wide"``
            (62 px) or ``"notebooks"`` (the paper notebooks' 50 px window: about 2.1x cheaper a
            step on a CPU, pale borders); see :func:`icon_view_transforms`.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``...; the model is moved there.
        seed: base seed of every cell's generator (see :func:`cell_generator`).
        progress: show a tqdm bar (icons/s).
        overwrite: start over even if ``icons_path`` could be resumed or holds other settings.
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: the optimization's model passes
            under ``torch.autocast`` (part of the settings hash when not fp32).
        border_prior: weight of the frame prior (:func:`atlas.optvis.priors.border_penalty`,
            relative to the objective; 0, the default, for none): pulls each icon's outer 5 px
            toward a smooth mid-gray frame (part of the settings hash when not 0).
        objective: where the icon objective reads the layer: ``"mean"`` (default: the direction
            objective on the activation averaged over every position the icon covers, so the
            whole icon depicts the direction) or ``"center"`` (the paper notebooks': the center
            position only). The stored and reported cosine is read the same way.
        start: how the icons start: ``"cold"`` (default): every cell from noise with ``steps``
            steps (the hash of renders made before the setting existed); ``"parent"`` renders
            the levels coarse to fine, the coarsest from noise with ``steps`` steps and every
            cell of a finer level from its parent cell's icon (the coarser cell that holds it,
            :func:`parent_rows`) with ``refine_steps`` steps, so rendering a level renders the
            coarser levels first (about 8x faster per icon; the icons of a region share one
            picture, see the module docstring).
        refine_steps: steps of a cell that starts from its parent's icon (default 16; at most
            ``steps``).
        refine_lr: Adam learning rate of those steps (default 0.04).
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
    transforms = check_render_settings(  # bad values fail here, before any work
        icon_size=icon_size, steps=steps, attempts=attempts, batch_size=batch_size, lr=lr, cossim_pow=cossim_pow,
        icon_view=icon_view, precision=precision, border_prior=border_prior, objective=objective, levels=levels,
        transforms=transforms, start=start, refine_steps=refine_steps, refine_lr=refine_lr)
    model_spec = None
    if scheduler is not None:
        from atlas.runtime.distributed import ModelSpec

        model_spec = ModelSpec.of(model, device=device)
        model = model_spec.for_shapes().load("cpu")  # the client only checks names and layers
    elif not isinstance(model, AtlasModel):
        raise ValueError(f"render_cells needs an AtlasModel here (got {type(model).__name__}); a model name or "
                         "ModelSpec is for scheduler=...")
    cattrs = cells_attrs(cells_path)
    require_current(cells_path)  # cells made from a layout that changed since: StaleInputError (run grid)
    if cattrs.get("model") and cattrs["model"] != model.name:
        raise ValueError(f"{cells_path} was collected with model {cattrs['model']!r} but the model given is "
                         f"{model.name!r}; render with --model {cattrs['model']}")
    layer = str(cattrs["layer"])
    model.layer(layer)  # unknown layer -> a helpful error before any work
    all_levels = read_cells(cells_path)
    wanted = sorted(all_levels) if levels is None else sorted({int(s) for s in levels})
    unknown = sorted(set(wanted) - set(all_levels))
    if unknown:
        raise ValueError(f"{cells_path} has grid sizes {sorted(all_levels)}, not {unknown}; pick from those")
    # with start="parent", a level's parent is the next coarser level of the file
    parent_of = dict(zip(sorted(all_levels)[1:], sorted(all_levels))) if start == "parent" else {}
    if parent_of and wanted:
        coarser = [s for s in sorted(all_levels) if s < wanted[-1] and s not in wanted]
        if coarser:
            log.info("the %s icons start from their parents': rendering the coarser levels %s too",
                     ", ".join(f"{s}x{s}" for s in wanted), ", ".join(f"{s}x{s}" for s in coarser))
            wanted = sorted(wanted + coarser)
    if whiten is True:
        source = cattrs.get("source")
        if not source or not Path(source).is_file():
            raise ValueError(f"whiten=True needs the activations.h5 that {cells_path} was built from ({source!r} "
                             "is not there); pass the matrix instead: whiten=whitening_from_activations(PATH)")
        log.info("computing the whitening matrix of %s from %s", layer, source)
        whiten = whitening_from_activations(source, layer)
    elif whiten is False:
        whiten = None
    settings = render_settings(str(cattrs.get("settings_hash", "")), model.name, layer, icon_size=icon_size,
                               steps=steps, attempts=attempts, lr=lr, cossim_pow=cossim_pow, seed=seed,
                               whiten=whiten, transforms=transforms, objective=objective)
    if precision != "fp32":  # fp32 renders keep the hash of earlier versions
        settings["precision"] = precision
    if border_prior:  # so do renders without the frame prior
        settings["border_prior"] = float(border_prior)
    refine_steps = min(int(refine_steps), int(steps))  # a warm start never costs more than a cold one
    if start != "cold":  # and cold renders
        settings.update(start=start, refine_steps=refine_steps, refine_lr=float(refine_lr))
    icons_path = Path(icons_path)
    total = {s: len(all_levels[s]) for s in wanted}
    found = None if overwrite else root_attrs(icons_path)
    if found is not None and found.get("kind") == KIND:
        # other settings: SettingsChangedError, nothing touched; only the cells' hash changed: not current
        same = not refuse_other_settings(icons_path, found, settings, stage="render", input_keys=INPUT_KEYS)
        recorded = (recorded_inputs(found) or {}).get("cells")
        if same and found.get("complete") and compare_input(recorded, root_attrs(cells_path)) != "changed":
            log.info("%s is complete and current; skipping render", icons_path)
            return RenderSummary(icons_path, total=total, up_to_date=True, complete=True)

    dev = resolve_device(device) if model_spec is None else torch.device("cpu")
    if model_spec is None and model.device != dev:
        log.info("moving the model to %s", dev)
        model.to(dev)
    attrs = dict(model=model.name, layer=layer, cells=str(cells_path), icon_size=int(icon_size), steps=int(steps),
                 attempts=int(attempts), lr=float(lr), cossim_pow=float(cossim_pow), seed=int(seed),
                 whiten=whiten is not None, transforms=", ".join(repr(t) for t in transforms),
                 cells_settings_hash=settings["cells_settings_hash"], start=start,
                 refine_steps=refine_steps if parent_of else 0, refine_lr=float(refine_lr) if parent_of else 0.0)
    digests = {s: level_digest(lv.cell_id, lv.direction) for s, lv in all_levels.items()}
    store = IconsFile.prepare(icons_path, {s: lv.cell_id for s, lv in all_levels.items()}, icon_size, settings,
                              attrs, digests=digests, inputs={"cells": cells_path}, overwrite=overwrite)
    work = _batches(store, wanted, {s: len(all_levels[s]) for s in wanted}, batch_size)
    n_work = sum(len(rows) for _, rows in work)
    summary = RenderSummary(icons_path, rendered={s: 0 for s in wanted}, total=total)
    if not n_work:
        # the levels asked for are done (others, if any, are left to a run that asks for them)
        log.info("levels %s of %s are complete and current; skipping render", list(wanted), icons_path)
        summary.up_to_date = True
        summary.complete = store.finish()
        return summary
    where = dev if model_spec is None else f"Dask workers ({model_spec.device})"
    how = f"{steps} steps" if not parent_of else (f"the coarsest level {steps} steps, the others from their parents' "
                                                   f"icons {refine_steps} steps at lr {refine_lr}")
    log.info("rendering %d icons of %s (%s) on %s: %s, best of %d, %d per batch, precision %s", n_work, layer,
             ", ".join(f"{s}x{s}" for s in wanted), where, how, attempts, batch_size, precision)
    template = IconBatch(layer, 0, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros((0, 0), np.float32),
                         icon_size=icon_size, steps=steps, attempts=attempts, lr=lr, cossim_pow=cossim_pow, seed=seed,
                         whiten=whiten,
                         transforms=tuple(transforms), precision=precision, border_prior=float(border_prior),
                         objective=objective)

    def level_batches(size: int) -> list[IconBatch]:
        """The pending batches of level ``size``; with a parent level (rendered by now), each cell
        starts from its parent's icon as stored."""
        lv, parent = all_levels[size], parent_of.get(size)
        batches = [dataclasses.replace(template, size=size, rows=rows, cell_id=lv.cell_id[rows],
                                       directions=lv.direction[rows].astype(np.float32))
                   for s, rows in work if s == size]
        if not batches or parent is None:
            return batches
        above = read_icons(icons_path, [parent])[parent]
        if not above.done.all():
            raise RuntimeError(f"grid {parent} of {icons_path} is not fully rendered, so grid {size} cannot start "
                               "from it; render again")
        up = parent_rows(lv, all_levels[parent])
        return [dataclasses.replace(b, init=above.icons[up[b.rows]], steps=refine_steps, lr=refine_lr,
                                    redirect_relu_steps=0) for b in batches]

    level_cossims: dict[int, list[np.ndarray]] = {}
    bar = tqdm(total=n_work, unit="icon", desc=f"render {layer}", disable=not progress)

    def write(result: IconBatchResult) -> None:
        store.write(result.size, result.rows, result.icons, result.objective, result.cossim)
        summary.rendered[result.size] += len(result.rows)
        level_cossims.setdefault(result.size, []).append(result.cossim)
        bar.update(len(result.rows))
        bar.set_postfix(cossim=f"{float(np.mean(result.cossim)):.2f}")

    try:
        if model_spec is not None:
            from atlas.runtime.distributed import client_for, run_render_batches

            with client_for(scheduler) as client:
                for size in wanted:  # level by level: a level's cells may start from the one before
                    run_render_batches(client, model_spec, level_batches(size), render_batch=render_icon_batch,
                                       on_batch=write)
        else:
            runner = model
            if compile:
                runner = compile_model(model, layer, icon_size=icon_size,
                                       backend=compile if isinstance(compile, str) else "inductor")
            for size in wanted:
                for batch in level_batches(size):
                    write(render_icon_batch(runner, batch))
    finally:
        bar.close()
    summary.complete = store.finish()
    summary.seconds = time.perf_counter() - t0
    if level_cossims:
        per_level = {size: np.concatenate(level_cossims[size]) for size in sorted(level_cossims)}
        summary.mean_cossim = float(np.mean(np.concatenate(list(per_level.values()))))
        summary.level_cossim = {size: float(np.mean(c)) for size, c in per_level.items()}
    log.info("%s", summary.describe())
    return summary
