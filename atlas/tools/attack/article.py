"""``atlas attack --protocol article``: the article's protocol for one class pair, end to end
(the counting is :mod:`~atlas.tools.attack.protocol`; third-class neighbourhoods are
:mod:`~atlas.tools.attack.third`)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.resources.wordnet import DEFAULT_MAX_GROUP, DEFAULT_MAX_HOPS
from atlas.tools.attack.evaluate import CORNERS, DEFAULT_SIZES, evaluate_patch, paste, predict
from atlas.tools.attack.neighbourhoods import (
    Candidate,
    cell_class_ids,
    comparison_cells,
    comparison_rows,
    grid_level,
    random_cell_rows,
)
from atlas.tools.attack.patches import example_patches, noise_patches, render_patches
from atlas.tools.attack.photos import (
    _class_photos,
    _universal_images,
    comparison_views,
    source_views,
)
from atlas.tools.attack.protocol import ProtocolCounts, ProtocolResult, protocol_result, protocol_table
from atlas.tools.attack.run import _cand_json, pair_and_layer
from atlas.tools.attack.third import (
    atlas_class_attribution,
    atlas_example_patches,
    atlas_has_attribution,
    excluded_classes,
    push_gradient,
    third_class_cells,
)

#: which neighbourhoods become patches: of a third class, of the target (the comparison atlas's
#: best cells), or both, reported side by side
KINDS = ("third", "target", "both")
#: how third-class cells are ranked: by the first-order push of their direction on the selection
#: photos, or by their atlas rows' own attribution to the target minus the source; "auto" is the
#: attribution where the atlas holds it (it found twice the flips of the push on the real atlas,
#: docs/attack.md) and the push where it does not
RANKS = ("auto", "push", "attribution")

# ---- the whole protocol ---------------------------------------------------------------------------


@dataclass
class ProtocolSettings:
    """Settings of :func:`run_protocol` (``atlas attack --protocol article``)."""

    source: str
    target: str
    kind: str = "third"  # "third", "target" or "both": which neighbourhoods become patches
    level: int | None = None
    patches: int = 10  # per family, as in the article
    rank: str = "auto"  # third kind: "push" (gradient on the selection photos), "attribution" (the atlas rows'), or auto
    screen: int = 0  # third kind: render this many of the best-ranked cells, keep the `patches` best on the selection photos
    controls: int = 10  # noise patches and random cells
    patch_px: int = 112
    steps: int = 256
    sizes: tuple[float, ...] = DEFAULT_SIZES
    selection_fraction: float = 0.25  # share of the source photos that rank candidates and pick the static placement
    augment: int = 24  # views per photo when a class has fewer than 8 photos
    max_photos: int | None = None  # source photos to use at most (None: all)
    top: int = 3  # a cell's top classes that must avoid the source, target and their relatives
    max_hops: int = DEFAULT_MAX_HOPS
    max_group: int | None = DEFAULT_MAX_GROUP
    min_count: int = 8
    universal_limit: int | None = None
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        self.sizes = tuple(float(s) for s in self.sizes)
        if not self.sizes or not all(0 < s <= 1 for s in self.sizes):
            raise ValueError(f"sizes are fractions of the image width in (0, 1], got {self.sizes}")
        if self.rank not in RANKS:
            raise ValueError(f"rank must be one of {', '.join(RANKS)}, not {self.rank!r}")
        if self.screen and self.screen < self.patches:
            raise ValueError(f"screen ({self.screen}) renders the candidates that the best {self.patches} are kept "
                             "from: give at least --patches, or 0 for no screening")
        if self.patches < 1 or self.controls < 0:
            raise ValueError("patches must be at least 1 and controls at least 0")
        if not 0 < self.selection_fraction < 1:
            raise ValueError(f"selection_fraction must be in (0, 1), got {self.selection_fraction}")


@dataclass
class ProtocolReport:
    source: str
    target: str
    model: str
    layer: str
    run_dir: str
    level: int
    settings: dict[str, Any]
    excluded: list[str]
    candidates: dict[str, list[dict[str, Any]]]
    n_source_views: int
    n_source_correct: int
    n_selection: int
    n_test: int
    families: dict[str, ProtocolResult]
    seconds: dict[str, float] = field(default_factory=dict)
    screening: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        return protocol_table(self.source, self.target, self.families)


def run_protocol(model: AtlasModel, run_dir: str | os.PathLike, settings: ProtocolSettings, *,
                 images: str | os.PathLike | None = None, target_images: str | os.PathLike | None = None,
                 universal: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> ProtocolReport:
    """The article's protocol for one class pair (module docstring); writes ``protocol.json``,
    ``protocol.md`` and ``patches.png`` to ``out_dir``.

    Families: ``third`` (rendered patches of the third-class neighbourhoods) and ``third_example``
    (crops of the atlas photos nearest them), ``target`` and ``target_example`` (the comparison
    atlas's best cells, which depict the target, and their crops of the comparison views): which
    of the two by ``settings.kind``; then the controls ``random_cell`` (rendered from random
    cells) and ``noise``.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    names, s_idx, t_idx, run_dir, layer = pair_and_layer(model, run_dir, settings.source, settings.target,
                                                         need_cells=True)
    level, cells = grid_level(run_dir, settings.level)

    # source photos: one view each (the photo as the model sees it), those classified correctly
    src_paths = _class_photos(run_dir, s_idx, images, names, "--images")
    if settings.max_photos:
        src_paths = src_paths[:: max(1, len(src_paths) // settings.max_photos)][: settings.max_photos]
    x, owner, tried = source_views(model, s_idx, src_paths, augment=settings.augment, seed=settings.seed,
                                   batch_size=settings.batch_size)
    # every k-th photo selects (the static placement, the candidates' ranking), the others measure;
    # with fewer than 8 photos (views of one photo) every k-th view
    step = max(2, int(round(1 / settings.selection_fraction)))
    unit = owner if len(src_paths) >= 8 else np.arange(len(x))
    is_sel = unit % step == 0
    sel, test = np.flatnonzero(is_sel), np.flatnonzero(~is_sel)
    if len(test) == 0 or len(sel) == 0:
        raise ValueError(f"only {len(x)} source view(s) classified correctly: too few to choose and measure on")
    with torch.no_grad():
        p_before = predict(model, x, settings.batch_size)[:, t_idx].numpy()

    # candidates: ranked on the selection views only
    tc = time.perf_counter()
    exclude = excluded_classes(s_idx, t_idx, len(names), max_hops=settings.max_hops, max_group=settings.max_group)
    by_kind: dict[str, list[Candidate]] = {}
    rendered_before: dict[str, torch.Tensor] = {}
    screening: list[dict[str, Any]] = []
    examples: dict[str, torch.Tensor] = {}
    if settings.kind in ("third", "both"):
        k = max(settings.patches, settings.screen)
        rank = settings.rank
        if rank == "auto":
            rank = "attribution" if atlas_has_attribution(run_dir, layer) else "push"
        if rank == "attribution":  # the atlas rows' own attribution, target minus source
            attr, _ = atlas_class_attribution(run_dir, level, [t_idx, s_idx])
            third = third_class_cells(cells, None, exclude, k=k, top=settings.top, min_count=settings.min_count,
                                      class_names=names, push=(attr[:, 0] - attr[:, 1])[cells.cell_id])
            if len(third) < settings.patches and settings.rank == "auto":  # too few rows list the target
                rank = "push"
        if rank == "push":  # first order on the selection photos
            grad = push_gradient(model, layer, x[sel], s_idx, t_idx, batch_size=max(1, settings.batch_size // 2))
            third = third_class_cells(cells, grad, exclude, k=k, top=settings.top, min_count=settings.min_count,
                                      class_names=names)
        settings = replace(settings, rank=rank)  # the report records the ranking used
        if not third:
            raise ValueError(f"no cell of grid {level} with {settings.min_count}+ rows pushes toward "
                             f"{names[t_idx]!r} and depicts a third class; try another --level")
        if len(third) > settings.patches:
            third, rendered_before["third"], screening = _screen(model, layer, third, x[sel], t_idx, settings,
                                                                 progress)
        by_kind["third"] = third
        examples["third"] = atlas_example_patches(run_dir, third, model, settings.patch_px)[0]
    if settings.kind in ("target", "both"):
        tgt_paths = _class_photos(run_dir, t_idx, target_images, names, "--target-images")
        # the target's photos and the selection photos of the source: none of the measured ones
        sel_paths = src_paths if len(src_paths) < 8 else [q for i, q in enumerate(src_paths) if i % step == 0]
        comp_x = comparison_views(model, (tgt_paths, sel_paths), augment=settings.augment, seed=settings.seed + 1)
        rows = comparison_rows(model, layer, comp_x, s_idx, t_idx, batch_size=max(1, settings.batch_size // 2),
                               progress=progress)
        tgt, _, _ = comparison_cells(run_dir, rows, level=level, k=settings.patches, n_random=0,
                                     seed=settings.seed, class_names=names)
        by_kind["target"] = tgt
        examples["target"] = example_patches(tgt, rows, comp_x, settings.patch_px)
    cands = [c for kind in by_kind.values() for c in kind]
    rand_i = random_cell_rows(cells, {c.iy * level + c.ix for c in cands}, settings.controls, settings.seed)
    rands = [Candidate(level, int(cells.cell_id[i]) // level, int(cells.cell_id[i]) % level, 0.0, 0.0, 0.0,
                       int(cells.count[i]), [names[c] for c in cell_class_ids(cells, i, len(names))][: settings.top],
                       cells.direction[i].astype(np.float32)) for i in rand_i]
    secs["candidates"] = time.perf_counter() - tc

    tr = time.perf_counter()
    todo = [c for kind, cs in by_kind.items() if kind not in rendered_before for c in cs] + rands
    rendered = (render_patches(model, layer, np.stack([c.direction for c in todo]), px=settings.patch_px,
                               steps=settings.steps, seed=settings.seed, progress=progress)
                if todo else torch.empty(0, 3, settings.patch_px, settings.patch_px))
    fam_patches: dict[str, torch.Tensor] = {}
    members: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    at = 0
    for kind, cs in by_kind.items():
        if kind in rendered_before:
            fam_patches[kind] = rendered_before[kind]
        else:
            fam_patches[kind] = rendered[at: at + len(cs)]
            at += len(cs)
        fam_patches[f"{kind}_example"] = examples[kind]
        members[kind], members[f"{kind}_example"] = [c.name for c in cs], [f"photo of {c.name}" for c in cs]
        labels[kind] = labels[f"{kind}_example"] = [", ".join(c.classes) for c in cs]
    fam_patches["random_cell"] = rendered[at:]
    members["random_cell"], labels["random_cell"] = [c.name for c in rands], [", ".join(c.classes) for c in rands]
    fam_patches["noise"] = noise_patches(settings.controls, settings.patch_px, settings.seed)
    members["noise"] = labels["noise"] = [f"noise {i}" for i in range(settings.controls)]
    secs["patches"] = time.perf_counter() - tr

    te = time.perf_counter()
    corners = tuple(CORNERS)
    results: dict[str, ProtocolResult] = {}
    total = sum(len(p) for p in fam_patches.values())
    with tqdm(total=total, desc=f"protocol {names[s_idx]} -> {names[t_idx]}", unit="patch", disable=not progress,
              leave=False) as bar:
        for fam, patches in fam_patches.items():
            if len(patches) == 0:
                continue
            effects = []
            for p in patches:
                effects.append(evaluate_patch(model, x, p, t_idx, settings.sizes, corners,
                                              batch_size=settings.batch_size))
                bar.update(1)
            counts = ProtocolCounts(np.stack([e.hit for e in effects]), np.stack([e.target_prob for e in effects]),
                                    p_before, settings.sizes, corners)
            results[fam] = protocol_result(fam, members[fam], counts, sel, test, labels=labels[fam],
                                           seed=settings.seed)
    secs["evaluate"] = time.perf_counter() - te

    if universal is not None:
        tu = time.perf_counter()
        univ_x, n_univ = _universal_images(model, universal, exclude=sorted(exclude), limit=settings.universal_limit,
                                           batch_size=settings.batch_size, progress=progress)
        for fam, r in results.items():
            rates = []
            for p in fam_patches[fam]:
                top = predict(model, paste(univ_x, p, r.static_size, r.static_corner), settings.batch_size).argmax(1)
                rates.append(float((top == t_idx).float().mean()))
            r.universal_per_patch, r.universal_images = rates, n_univ
        secs["universal"] = time.perf_counter() - tu
    secs["total"] = time.perf_counter() - t0

    report = ProtocolReport(
        names[s_idx], names[t_idx], model.name, layer, str(run_dir), level,
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        sorted(names[i] for i in exclude),
        {**{kind: [_cand_json(c) for c in cs] for kind, cs in by_kind.items()},
         "random_cell": [_cand_json(c) for c in rands]},
        tried, len(x), len(sel), len(test), results, secs, screening)
    if out_dir is not None:
        write_protocol_report(report, out_dir, fam_patches)
    return report


def _screen(model: AtlasModel, layer: str, cands: list[Candidate], views: torch.Tensor, target: int,
            settings: ProtocolSettings, progress: bool) -> tuple[list[Candidate], torch.Tensor, list[dict[str, Any]]]:
    """Render every candidate and keep the ``settings.patches`` that flip most of the selection
    ``views`` (best corner and size per view; ties: the target probability): the patches and the
    screening record. The measured photos play no part."""
    imgs = render_patches(model, layer, np.stack([c.direction for c in cands]), px=settings.patch_px,
                          steps=settings.steps, seed=settings.seed, progress=progress)
    scores, record = [], []
    for c, p in zip(cands, imgs):
        e = evaluate_patch(model, views, p, target, settings.sizes, tuple(CORNERS), batch_size=settings.batch_size)
        rate, prob = float(e.hit.any((0, 1)).mean()), float(e.target_prob.max((0, 1)).mean())
        scores.append(rate + 1e-3 * prob)
        record.append({**_cand_json(c), "selection_dynamic": rate, "selection_prob": prob})
    keep = np.argsort(-np.asarray(scores), kind="stable")[: settings.patches]
    for i in keep:
        record[i]["kept"] = True
    return [cands[i] for i in keep], imgs[torch.from_numpy(keep)], record


def write_protocol_report(report: ProtocolReport, out_dir: str | os.PathLike,
                          patches: dict[str, torch.Tensor]) -> Path:
    """``protocol.json``, ``protocol.md`` and ``patches.png`` (every patch of every family with what
    it depicts, its cell's top classes, and its own dynamic / static success) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(report.to_json())
    (out / "protocol.md").write_text(report.table() + "\n")
    fams = [f for f in report.families if len(patches.get(f, ())) > 0]
    cols = max(len(patches[f]) for f in fams)
    fig, axes = plt.subplots(len(fams), cols, figsize=(2.2 * cols, 2.75 * len(fams)), squeeze=False)
    for r, fam in enumerate(fams):
        res = report.families[fam]
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(patches[fam]):
                continue
            ax.imshow(patches[fam][c].permute(1, 2, 0).clamp(0, 1).numpy())
            label = res.labels[c] if c < len(res.labels) else res.members[c]
            ax.set_title(f"{res.members[c]}\n{label[:34]}\n{100 * res.per_patch_dynamic[c]:.0f}% dyn / "
                         f"{100 * res.per_patch_static[c]:.0f}% static", fontsize=7)
        axes[r][0].text(-0.08, 0.5, fam.replace("_", " "), transform=axes[r][0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=10)
    fig.suptitle(f"{report.source} -> {report.target}: the patches, {report.n_test} held-out photos each", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "patches.png", dpi=90)
    plt.close(fig)
    return out
