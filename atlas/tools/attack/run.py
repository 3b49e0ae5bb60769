"""The whole attack for one class pair (``atlas attack``): its settings (:class:`AttackSettings`)
and :func:`run_attack`, which runs the steps of the other modules in order, chooses each
family's patch on a share of the source views (half by default) and measures it on the rest."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.resources import class_index, imagenet_class_names
from atlas.store.runs import require_atlas_files
from atlas.tools.attack.evaluate import CORNERS, DEFAULT_SIZES, PatchEffect, evaluate_patch, paste, predict
from atlas.tools.attack.neighbourhoods import Candidate, ComparisonRows, comparison_cells, comparison_rows, grid_level
from atlas.tools.attack.patches import example_patches, icon_patches, noise_patches, render_patches
from atlas.tools.attack.photos import (
    _class_photos,
    _universal_images,
    comparison_views,
    source_images,
)
from atlas.tools.attack.report import AttackReport, FamilyResult, write_report
from atlas.tools.attack.third import atlas_example_patches, excluded_classes, push_gradient, third_class_cells

log = logging.getLogger("atlas.tools.attack")


@dataclass
class AttackSettings:
    """Settings of :func:`run_attack` (``atlas attack``)."""

    source: str
    target: str
    level: int | None = None
    candidates: int = 4
    random_cells: int = 4
    noise_patches: int = 4
    patch: str = "optvis"  # or "icon"
    patch_px: int = 112
    steps: int = 256
    sizes: tuple[float, ...] = DEFAULT_SIZES
    static_corner: str = "br"
    augment: int = 24
    seed: int = 0
    universal_limit: int | None = None
    batch_size: int = 32
    selection_fraction: float = 0.5  # share of the source views each family's patch is chosen on
    kind: str = "target"  # "target": the comparison atlas's best cells; "third": cells of a third class


    def __post_init__(self) -> None:
        if self.patch not in ("optvis", "icon"):
            raise ValueError(f"patch must be 'optvis' (a fresh feature visualization) or 'icon', not {self.patch!r}")
        if self.static_corner not in CORNERS:
            raise ValueError(f"static_corner must be one of {', '.join(CORNERS)}, not {self.static_corner!r}")
        self.sizes = tuple(float(s) for s in self.sizes)
        if not self.sizes or not all(0 < s <= 1 for s in self.sizes):
            raise ValueError(f"sizes are fractions of the image width in (0, 1], got {self.sizes}")
        if self.kind not in ("target", "third"):
            raise ValueError(f"kind must be 'target' or 'third' (both side by side: protocol 'article'), "
                             f"not {self.kind!r}")
        if self.candidates < 1:
            raise ValueError("candidates must be at least 1")
        if not 0 < self.selection_fraction < 1:
            raise ValueError(f"selection_fraction is the share of views the patches are chosen on, in (0, 1); "
                             f"got {self.selection_fraction}")


def pair_and_layer(model: AtlasModel, run_dir: str | os.PathLike, source: str, target: str, *,
                   need_cells: bool = False) -> tuple[list[str], int, int, Path, str]:
    """Check an attack's class pair and run folder: the model's class names, the source and
    target indices, the run folder and its atlas's layer (clear errors for an unknown or
    repeated class and a folder that is not an atlas run)."""
    from atlas.store.layout import read_layout

    names = list(model.class_names or imagenet_class_names())
    s_idx, t_idx = class_index(source, names), class_index(target, names)
    if s_idx == t_idx:
        raise ValueError(f"source and target are the same class ({names[s_idx]!r})")
    run_dir = Path(run_dir)
    require_atlas_files(run_dir, {"layout.h5": "reduce", **({"cells.h5": "grid"} if need_cells else {})})
    layer = str(read_layout(run_dir / "layout.h5").attrs.get("layer"))
    model.layer(layer)
    return names, s_idx, t_idx, run_dir, layer


def _select(effects: Sequence[PatchEffect], sel: np.ndarray) -> tuple[int, list[float]]:
    """The member with the best mean dynamic success on the selection views (ties: mean target
    probability)."""
    scores = []
    for e in effects:
        s = e.subset(sel)
        scores.append(float(s.dynamic().mean()) + 1e-3 * float(s.prob_dynamic().mean()))
    return int(np.argmax(scores)), scores


def run_attack(model: AtlasModel, run_dir: str | os.PathLike, settings: AttackSettings, *,
               images: str | os.PathLike | None = None, target_images: str | os.PathLike | None = None,
               universal: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
               progress: bool = True) -> AttackReport:
    """The whole attack for one class pair; writes ``report.json`` and figures to ``out_dir``.

    ``images`` / ``target_images``: photos of the source / target class (a folder or list file);
    default the photos labelled with that class in the atlas's own image source. ``universal``: a
    folder of photos of many classes for the universal mode (default: none).
    """
    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    names, s_idx, t_idx, run_dir, layer = pair_and_layer(model, run_dir, settings.source, settings.target)
    src_paths = _class_photos(run_dir, s_idx, images, names, "--images")
    tgt_paths = _class_photos(run_dir, t_idx, target_images, names, "--target-images")

    # the class-comparison atlas, from views of both classes' photos (their own seed, so that the
    # views the patches are measured on are other crops)
    tc = time.perf_counter()
    comp_x = comparison_views(model, (tgt_paths, src_paths), augment=settings.augment, seed=settings.seed + 1)
    rows = comparison_rows(model, layer, comp_x, s_idx, t_idx, batch_size=settings.batch_size,
                           progress=progress)
    cands, rands, level = comparison_cells(run_dir, rows, level=settings.level, k=settings.candidates,
                                           n_random=settings.random_cells + (settings.candidates if settings.kind == "third"
                                                                             else 0),
                                           seed=settings.seed, class_names=names)
    secs["comparison"] = time.perf_counter() - tc
    log.info("candidates for %s -> %s:\n%s", names[s_idx], names[t_idx], "\n".join(c.describe() for c in cands))

    x, tried = source_images(model, s_idx, src_paths, augment=settings.augment, seed=settings.seed,
                             batch_size=settings.batch_size)
    idx = np.arange(len(x))
    # every k-th view selects, the others measure (k = 2 for half and half)
    step = max(2, int(round(1 / settings.selection_fraction)))
    sel, test = (idx[0::step], np.setdiff1d(idx, idx[0::step])) if len(x) >= 4 else (idx, idx)
    if len(x) < 4:
        log.warning("only %d source views: the patch is chosen and measured on the same views", len(x))
    with torch.no_grad():
        p_before = predict(model, x, settings.batch_size)[:, t_idx].numpy()
    if settings.kind == "third":  # ranked on the selection views, so that the measured ones play no part
        tc = time.perf_counter()
        cands = _third_candidates(model, run_dir, layer, level, x[sel], s_idx, t_idx, names, settings)
        taken = {(c.iy, c.ix) for c in cands}
        rands = [c for c in rands if (c.iy, c.ix) not in taken][: settings.random_cells]
        secs["comparison"] += time.perf_counter() - tc

    # patches
    tr = time.perf_counter()
    fam_patches, fam_names = _family_patches(model, layer, cands, rands, rows, comp_x, settings, progress,
                                             run_dir=run_dir)
    secs["patches"] = time.perf_counter() - tr

    # evaluate every member on every view; choose on the selection half, report the test half
    te = time.perf_counter()
    from tqdm.auto import tqdm

    total = sum(len(p) for p in fam_patches.values())
    results: dict[str, FamilyResult] = {}
    effects_by_family: dict[str, list[PatchEffect]] = {}
    with tqdm(total=total, desc=f"attack {names[s_idx]} -> {names[t_idx]}", unit="patch", disable=not progress,
              leave=False) as bar:
        for fam, patches in fam_patches.items():
            effects = []
            for p in patches:
                effects.append(evaluate_patch(model, x, p, t_idx, settings.sizes, batch_size=settings.batch_size))
                bar.update(1)
            effects_by_family[fam] = effects
            if not effects:
                raise ValueError(f"no {fam.replace('_', ' ')} patch to compare with (the atlas has too few cells)")
            k, scores = _select(effects, sel)
            e = effects[k].subset(test)
            results[fam] = FamilyResult(
                fam, fam_names[fam], scores, k, e.static(settings.static_corner).tolist(), e.dynamic().tolist(),
                e.dynamic_any_size(), float(p_before[test].mean()), e.prob_static(settings.static_corner).tolist(),
                e.prob_dynamic().tolist()).with_intervals(len(test))
    secs["evaluate"] = time.perf_counter() - te

    # universal mode
    n_univ = 0
    univ_x = None
    if universal is not None:
        tu = time.perf_counter()
        univ_x, n_univ = _universal_images(model, universal, exclude=(s_idx, t_idx), limit=settings.universal_limit,
                                           batch_size=settings.batch_size, progress=progress)
        for fam, patches in fam_patches.items():
            r = results[fam]
            flip, changed, prob = _universal(model, univ_x, patches[r.chosen], t_idx, settings)
            r.universal_flip, r.universal_changed, r.universal_prob = flip, changed, prob
        secs["universal"] = time.perf_counter() - tu
    secs["total"] = time.perf_counter() - t0

    report = AttackReport(
        names[s_idx], names[t_idx], s_idx, t_idx, model.name, layer, str(run_dir), level,
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        [_cand_json(c) for c in cands], [_cand_json(c) for c in rands], tried, len(x), len(sel), len(test),
        results, n_univ, secs)
    if out_dir is not None:
        write_report(report, out_dir, model, x[test], fam_patches, effects_by_family, cands, test, univ_x)
    return report


def _third_candidates(model: AtlasModel, run_dir: Path, layer: str, level: int, views: torch.Tensor, source: int,
                      target: int, names: Sequence[str], settings: AttackSettings) -> list[Candidate]:
    """The third-class cells of grid ``level`` that push ``views`` of the source most toward the
    target (:mod:`atlas.tools.attack.third`)."""
    _, cells = grid_level(run_dir, level)
    exclude = excluded_classes(source, target, len(names))
    grad = push_gradient(model, layer, views, source, target, batch_size=max(1, settings.batch_size // 2))
    cands = third_class_cells(cells, grad, exclude, k=settings.candidates, class_names=names)
    if not cands:
        raise ValueError(f"no cell of grid {level} pushes toward {names[target]!r} and depicts a third class; "
                         "try another --level")
    return cands


def _family_patches(model: AtlasModel, layer: str, cands: Sequence[Candidate], rands: Sequence[Candidate],
                    rows: ComparisonRows, views: torch.Tensor, settings: AttackSettings, progress: bool, *,
                    run_dir: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The patches of the four families and their members' names: the candidates' ("atlas") and
    the random cells' ("random_cell"), rendered in one batch or their icons; the photo crops of
    the candidates from the comparison ``views`` ("example"); and the noise patches ("noise")."""
    if settings.patch == "icon":
        atlas_p, rand_p = icon_patches(cands), icon_patches(rands)
    else:
        dirs = np.stack([c.direction for c in [*cands, *rands]])
        both = render_patches(model, layer, dirs, px=settings.patch_px, steps=settings.steps, seed=settings.seed,
                              progress=progress)
        atlas_p, rand_p = both[: len(cands)], both[len(cands):]
    noise_p = noise_patches(settings.noise_patches, settings.patch_px, settings.seed)
    if settings.kind == "third":  # crops of the atlas photos nearest the cells' directions
        if run_dir is None:
            raise ValueError("third-class example patches need the atlas run's folder")
        example_p = atlas_example_patches(run_dir, cands, model, settings.patch_px)[0]
    else:  # crops of the comparison views that push most toward the target
        example_p = example_patches(cands, rows, views, settings.patch_px)
    fam_patches = {"atlas": atlas_p, "example": example_p, "random_cell": rand_p, "noise": noise_p}
    fam_names = {"atlas": [c.name for c in cands], "example": [f"example of {c.name}" for c in cands],
                 "random_cell": [c.name for c in rands], "noise": [f"noise {i}" for i in range(len(noise_p))]}
    return fam_patches, fam_names


def _cand_json(c: Candidate) -> dict[str, Any]:
    return {"cell": [c.size, c.iy, c.ix], "score": c.score, "target_attribution": c.target_attribution,
            "source_attribution": c.source_attribution, "count": c.count, "classes": c.classes[:5]}


def _universal(model: AtlasModel, x: torch.Tensor, patch: torch.Tensor, target: int, settings: AttackSettings
               ) -> tuple[list[float], list[float], list[float]]:
    before = predict(model, x, settings.batch_size).argmax(1)
    flip, changed, prob = [], [], []
    for frac in settings.sizes:
        p = predict(model, paste(x, patch, frac, settings.static_corner), settings.batch_size)
        top = p.argmax(1)
        flip.append(float((top == target).float().mean()))
        changed.append(float((top != before).float().mean()))
        prob.append(float(p[:, target].mean()))
    return flip, changed, prob
