"""Patch attacks from atlas neighbourhoods (Carter et al., "Activation Atlas", Distill 2019, section
"Focusing on a single classification": a snorkel photo plus a steam-locomotive patch reads as
"scuba diver").

The steps, each a function of its own (and together :func:`run_attack`, ``atlas attack``):

1. :func:`comparison_rows` + :func:`comparison_cells`: the class-comparison atlas. Every spatial
   position of views (crops, mirror images) of photos of the two classes gets its attribution to
   the target and to the source (``h . d logit / d h``, as collect computes it); the positions are
   placed on the atlas with its fitted layout, and each cell is scored by the mean target-minus-
   source attribution of the positions in it. The best cells are the neighbourhoods that push
   toward the target more than toward the source; a cell's direction is the mean of its
   positions that push toward the target.
2. :func:`render_patches`: a neighbourhood -> a patch: a fresh feature visualization of the cell's
   mean direction at patch resolution (the direction objective with cosine weighting, averaged
   over every position of the layer so that the whole patch carries the feature; FFT +
   decorrelated colour; Lucid's standard transforms), or the cell's rendered icon.
3. :func:`paste`: patches pasted into a corner at several sizes (a fraction of the image width);
   "static" is one corner for all images, "dynamic" the best corner per image.
4. :func:`evaluate_patch`: over images the model classified as the source before, the fraction
   whose top-1 becomes the target, and the target probability before and after.

Baselines, rendered and chosen exactly as the atlas patch is: patches from random atlas cells, and
uniform noise patches. The source images are split in two: the patch of each family (atlas,
random cell, noise) is chosen on the first half and every figure is measured on the second, so
picking the best of several candidates does not inflate the score. The universal mode pastes the
chosen patches over many images of many classes and counts flips to the target.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.models import AtlasModel
from atlas.resources import class_index, imagenet_class_names

log = logging.getLogger(__name__)

#: corner name -> (row, column) of the corner, 0 = top/left, 1 = bottom/right
CORNERS = {"tl": (0, 0), "tr": (0, 1), "bl": (1, 0), "br": (1, 1)}
DEFAULT_SIZES = (0.2, 0.3, 0.4, 0.5)
FAMILIES = ("atlas", "example", "random_cell", "noise")
#: how many of the held-out views a rate is measured on decides its interval: Wilson, 95%
Z95 = 1.959964


# ---- 1. candidate neighbourhoods ----------------------------------------------------------------


@dataclass
class Candidate:
    """One atlas cell as a patch source. ``score`` = ``target_attribution - source_attribution``
    (means over the cell's rows); ``classes``: the cell's top classes by the atlas's attribution."""

    size: int
    iy: int
    ix: int
    score: float
    target_attribution: float
    source_attribution: float
    count: int
    classes: list[str]
    direction: np.ndarray = field(repr=False)
    icon: np.ndarray | None = field(default=None, repr=False)
    example_row: int = -1  # the comparison row of the cell that pushes most toward the target

    @property
    def name(self) -> str:
        return f"cell {self.size}:{self.iy},{self.ix}"

    def describe(self) -> str:
        return (f"{self.name:<14} score {self.score:+.4f} (target {self.target_attribution:+.4f}, source "
                f"{self.source_attribution:+.4f}), {self.count} rows, top classes: {', '.join(self.classes[:3])}")


@dataclass
class ComparisonRows:
    """Every spatial position of a set of photos at ``layer``: the activation vectors ``(M, C)``
    (float16), their attribution to the target and to the source ``(M,)``, their image ``(M,)``,
    their (y, x) position ``(M, 2)`` and the layer's grid ``(H, W)``."""

    acts: np.ndarray
    target_attribution: np.ndarray
    source_attribution: np.ndarray
    image: np.ndarray
    position: np.ndarray | None = None
    grid: tuple[int, int] = (0, 0)

    @property
    def diff(self) -> np.ndarray:
        return self.target_attribution - self.source_attribution


def comparison_rows(model: AtlasModel, layer: str, images: torch.Tensor, source: int, target: int, *,
                    batch_size: int = 16, progress: bool = False) -> ComparisonRows:
    """Activations and per-position attribution ``h . d logit_c / d h`` to ``target`` and
    ``source`` at every position of ``layer`` for ``images`` ``(N, 3, S, S)``: one forward and
    two backward passes (down to the layer) per batch, as collect's candidate classes
    (:func:`atlas.stages.collect.rows.position_attribution`)."""
    from tqdm.auto import tqdm

    from atlas.stages.collect.rows import position_attribution

    acts, ta, sa, img, pos = [], [], [], [], []
    grid = (0, 0)
    for start in tqdm(range(0, len(images), batch_size), desc="comparison rows", unit="batch",
                      disable=not progress, leave=False):
        x = images[start:start + batch_size].to(model.device)
        pair = torch.tensor([[target, source]], device=x.device).expand(len(x), 2)
        h, _, attr = position_attribution(model, x, layer, pair)  # attr: (b, 2, H, W)
        b, c, hh, ww = h.shape
        acts.append(h.permute(0, 2, 3, 1).reshape(-1, c).cpu().numpy().astype(np.float16))
        ta.append(attr[:, 0].reshape(-1).cpu().numpy())
        sa.append(attr[:, 1].reshape(-1).cpu().numpy())
        img.append(np.repeat(np.arange(start, start + b), hh * ww))
        pos.append(np.tile(np.stack(np.divmod(np.arange(hh * ww), ww), 1), (b, 1)).astype(np.int16))
        grid = (hh, ww)
    if not acts:
        raise ValueError("no images to compare")
    return ComparisonRows(np.concatenate(acts), np.concatenate(ta), np.concatenate(sa), np.concatenate(img),
                          np.concatenate(pos), grid)


def comparison_cells(run_dir: str | os.PathLike, rows: ComparisonRows, *, level: int | None = None, k: int = 4,
                     n_random: int = 4, min_rows: int = 8, seed: int = 0,
                     class_names: Sequence[str] | None = None) -> tuple[list[Candidate], list[Candidate], int]:
    """The class-comparison atlas: ``rows`` (every position of photos of the two classes) placed
    on the atlas in ``run_dir`` with its fitted layout, binned into the cells of grid ``level``
    (default: the middle size of ``cells.h5``) and scored by their mean target-minus-source
    attribution. Returns the ``k`` best cells holding at least ``min_rows`` rows (direction: the
    mean of the cell's rows that push toward the target), ``n_random`` other atlas cells drawn at
    random (direction: the cell's own mean, as in ``cells.h5``) for the baseline, and the level."""
    from atlas.stages.grid import grid_cells
    from atlas.stages.reduce import load_placer, project
    from atlas.store.cells import cells_attrs, read_cells
    from atlas.store.icons import read_icons

    run_dir = Path(run_dir)
    for name, stage in (("layout.h5", "reduce"), ("cells.h5", "grid")):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir} holds no {name}; give the folder of an atlas run (run `atlas {stage}` first)")
    sizes = [int(v) for v in cells_attrs(run_dir / "cells.h5")["sizes"]]
    level = level or sizes[len(sizes) // 2]
    if level not in sizes:
        raise ValueError(f"{run_dir / 'cells.h5'} has grid sizes {sizes}, not {level}; pick one of them (--level)")
    cells = read_cells(run_dir / "cells.h5", [level])[level]
    layout_path = run_dir / "layout.h5"
    xy = project(layout_path, rows.acts.astype(np.float32), est=load_placer(layout_path))
    ok = np.isfinite(xy).all(1)
    ids = np.full(len(xy), -1, np.int64)
    ids[ok] = grid_cells(np.clip(xy[ok], 0.0, 1.0), level)
    diff = rows.diff.astype(np.float64)
    uniq, inv, cnt = np.unique(ids[ok], return_inverse=True, return_counts=True)
    mean_diff = np.bincount(inv, weights=diff[ok]) / cnt
    mean_t = np.bincount(inv, weights=rows.target_attribution[ok].astype(np.float64)) / cnt
    mean_s = np.bincount(inv, weights=rows.source_attribution[ok].astype(np.float64)) / cnt
    icons = None
    if (run_dir / "icons.h5").is_file():
        try:
            icons = read_icons(run_dir / "icons.h5", [level])[level]
        except (ValueError, OSError, KeyError):
            icons = None
    icon_row = {} if icons is None else {int(c): j for j, c in enumerate(icons.cell_id)}
    cell_row = {int(c): i for i, c in enumerate(cells.cell_id)}
    names = list(class_names or imagenet_class_names())

    def info(cid: int) -> tuple[list[str], np.ndarray | None]:
        i, j = cell_row.get(cid), icon_row.get(cid)
        classes = [] if i is None else [names[int(c)] for c, v in zip(cells.top_classes[i], cells.top_values[i])
                                       if v > 0 and 0 <= c < len(names)]
        icon = icons.icons[j] if icons is not None and j is not None and bool(icons.done[j]) else None
        return classes, icon

    acts_ok = rows.acts[ok]
    push = np.bincount(inv, weights=np.maximum(diff[ok], 0.0))  # the cell's total push toward the target
    order = [u for u in np.argsort(-push, kind="stable") if cnt[u] >= min_rows and mean_diff[u] > 0][:k]
    if not order:
        raise ValueError(f"no cell of grid {level} holds {min_rows} or more positions that push toward the target "
                         "more than the source; try a coarser --level, or more photos of the two classes")
    cands = []
    for u in order:
        w = np.where(inv == u, np.maximum(diff[ok], 0.0), 0.0)
        sel = w > 0
        direction = (acts_ok[sel].astype(np.float32) * w[sel, None]).sum(0) / w[sel].sum()
        cid = int(uniq[u])
        classes, icon = info(cid)
        members = np.flatnonzero(ok)[inv == u]
        best = int(members[np.argmax(diff[members])])
        cands.append(Candidate(level, cid // level, cid % level, float(mean_diff[u]), float(mean_t[u]),
                               float(mean_s[u]), int(cnt[u]), classes, direction.astype(np.float32), icon,
                               example_row=best))
    taken = {c.iy * level + c.ix for c in cands}
    pool = [i for i, c in enumerate(cells.cell_id) if int(c) not in taken]
    rng = np.random.default_rng(seed)
    rands = []
    for i in rng.choice(pool, size=min(n_random, len(pool)), replace=False) if pool else []:
        cid = int(cells.cell_id[i])
        classes, icon = info(cid)
        hit = np.flatnonzero(uniq == cid)
        t = float(mean_t[hit[0]]) if len(hit) else 0.0
        s_ = float(mean_s[hit[0]]) if len(hit) else 0.0
        rands.append(Candidate(level, cid // level, cid % level, t - s_, t, s_, int(cells.count[i]), classes,
                               cells.direction[i].astype(np.float32), icon))
    return cands, rands, level


# ---- 2. patches -----------------------------------------------------------------------------------


def render_patches(model: AtlasModel, layer: str, directions_: np.ndarray, *, px: int = 112, steps: int = 256,
                   seed: int = 0, cossim_pow: float = 1.0, progress: bool = False) -> torch.Tensor:
    """One feature visualization per direction ``(K, C)`` at ``px`` x ``px``: ``(K, 3, px, px)`` in
    [0, 1], rendered in one batch (each image from its own seeded generator)."""
    from atlas.optvis import directions, fft_image, render_vis, standard_transforms

    vecs = np.asarray(directions_, np.float32)
    gens = [torch.Generator().manual_seed(seed * 100003 + i) for i in range(len(vecs))]
    obj = directions(layer, vecs, cossim_pow=cossim_pow, spatial_mean=True)
    res = render_vis(model, obj, fft_image(px, len(vecs), generator=gens, device=model.device),
                     standard_transforms(), steps=steps, generator=gens, progress=progress)
    return res.images.detach().cpu()


def example_patches(cands: Sequence[Candidate], rows: ComparisonRows, views: torch.Tensor, px: int,
                    fraction: float = 0.5) -> torch.Tensor:
    """Dataset-example patches, the paper's own kind: for each candidate, the photo crop around the
    position of its cell that pushes most toward the target (``fraction`` of the view's width,
    centred on the position and kept inside the view), resized to ``px``: ``(K, 3, px, px)``."""
    if rows.position is None:
        raise ValueError("these comparison rows carry no positions; compute them with comparison_rows")
    gh, gw = rows.grid
    out = []
    for c in cands:
        if c.example_row < 0:
            raise ValueError(f"{c.name} has no example row")
        view = views[int(rows.image[c.example_row])]
        _, h, w = view.shape
        y, x = rows.position[c.example_row]
        side = max(2, int(round(fraction * min(h, w))))
        cy, cx = (float(y) + 0.5) / gh * h, (float(x) + 0.5) / gw * w
        top = int(min(max(round(cy - side / 2), 0), h - side))
        left = int(min(max(round(cx - side / 2), 0), w - side))
        crop = view[:, top:top + side, left:left + side][None]
        out.append(F.interpolate(crop.float(), size=(px, px), mode="bilinear", align_corners=False,
                                 antialias=True)[0].clamp(0, 1))
    return torch.stack(out)


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% by default): ``(low, high)`` in [0, 1]."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def noise_patches(n: int, px: int, seed: int = 0) -> torch.Tensor:
    """``n`` uniform-noise patches ``(n, 3, px, px)``: the baseline every patch must beat."""
    return torch.rand(n, 3, px, px, generator=torch.Generator().manual_seed(seed))


def icon_patches(cands: Sequence[Candidate]) -> torch.Tensor:
    """The rendered icons of candidates as patches ``(K, 3, S, S)``; an error when one is missing."""
    missing = [c.name for c in cands if c.icon is None]
    if missing:
        raise ValueError(f"no rendered icon for {', '.join(missing)}; run `atlas render` or use patch=optvis")
    return torch.stack([torch.from_numpy(np.asarray(c.icon)).permute(2, 0, 1).float() / 255 for c in cands])


# ---- 3. pasting -----------------------------------------------------------------------------------


def paste(images: torch.Tensor, patch: torch.Tensor, frac: float, corner: str) -> torch.Tensor:
    """``images`` (N, 3, H, W) with ``patch`` (3, h, w) resized to ``round(frac * W)`` px square
    and pasted into ``corner`` (``tl``, ``tr``, ``bl``, ``br``); a new tensor."""
    if corner not in CORNERS:
        raise ValueError(f"unknown corner {corner!r}; use one of {', '.join(CORNERS)}")
    if not 0 < frac <= 1:
        raise ValueError(f"a patch size is a fraction of the image width in (0, 1], not {frac}")
    _, _, h, w = images.shape
    s = max(1, round(frac * w))
    p = F.interpolate(patch[None].float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)[0]
    cy, cx = CORNERS[corner]
    y0, x0 = cy * (h - s), cx * (w - s)
    out = images.clone()
    out[:, :, y0:y0 + s, x0:x0 + s] = p.clamp(0, 1).to(out)
    return out


# ---- 4. evaluation --------------------------------------------------------------------------------


@dataclass
class PatchEffect:
    """The model's response to one patch on N images at each size and corner.

    ``target_prob``, ``hit`` (top-1 == target): ``(n_sizes, n_corners, N)``; ``top1``: the same,
    the top-1 class. Corners in :data:`CORNERS` order.
    """

    sizes: tuple[float, ...]
    target_prob: np.ndarray
    hit: np.ndarray
    top1: np.ndarray

    def static(self, corner: str = "br") -> np.ndarray:
        """Success rate per size with the patch in one corner for every image."""
        return self.hit[:, list(CORNERS).index(corner)].mean(-1)

    def dynamic(self) -> np.ndarray:
        """Success rate per size with the best corner per image."""
        return self.hit.any(1).mean(-1)

    def dynamic_any_size(self) -> float:
        """Success rate with the best corner and size per image."""
        return float(self.hit.any((0, 1)).mean())

    def prob_static(self, corner: str = "br") -> np.ndarray:
        return self.target_prob[:, list(CORNERS).index(corner)].mean(-1)

    def prob_dynamic(self) -> np.ndarray:
        return self.target_prob.max(1).mean(-1)

    def subset(self, idx: np.ndarray) -> PatchEffect:
        return PatchEffect(self.sizes, self.target_prob[..., idx], self.hit[..., idx], self.top1[..., idx])


@torch.no_grad()
def predict(model: AtlasModel, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Softmax probabilities ``(N, K)`` of images ``(N, 3, S, S)`` in batches."""
    out = []
    for i in range(0, len(images), batch_size):
        out.append(model(images[i:i + batch_size].to(model.device)).softmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate_patch(model: AtlasModel, images: torch.Tensor, patch: torch.Tensor, target: int,
                   sizes: Sequence[float] = DEFAULT_SIZES, corners: Sequence[str] = tuple(CORNERS),
                   batch_size: int = 32) -> PatchEffect:
    """Paste ``patch`` on every image at every size and corner and record the model's answer."""
    n = len(images)
    prob = np.zeros((len(sizes), len(corners), n), np.float32)
    top1 = np.zeros((len(sizes), len(corners), n), np.int64)
    for i, frac in enumerate(sizes):
        for j, corner in enumerate(corners):
            p = predict(model, paste(images, patch, frac, corner), batch_size)
            prob[i, j] = p[:, target].numpy()
            top1[i, j] = p.argmax(1).numpy()
    return PatchEffect(tuple(float(s) for s in sizes), prob, top1 == target, top1)


# ---- images ---------------------------------------------------------------------------------------


def augment_photo(img: Image.Image, model: AtlasModel, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` views of one photo as the model sees them: the photo itself, then random resized
    crops (35-100% of the area) and mirror images, ``(n, 3, S, S)``."""
    import torchvision.transforms.v2 as T

    views = [model.image_transform(img)]
    crop = T.RandomResizedCrop(model.input_size, scale=(0.35, 1.0), antialias=True)
    for i in range(1, n):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        torch.manual_seed(seed)
        view = crop(img)
        if i % 2:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(model.image_transform(view))
    return torch.stack(views)


def _photo_paths(spec: str | os.PathLike) -> list[tuple[str, int]]:
    from atlas.data import open_source

    src = open_source(spec)
    out = []
    for ref in src.refs():
        p = src.path(ref)
        if p is not None:
            out.append((p, int(ref.label)))
    if not out:
        raise ValueError(f"{spec} holds no image files (tar shards are not read here)")
    return out


def _load(path: str, model: AtlasModel) -> Image.Image | None:
    from atlas.data import BadImage, decode_image

    try:
        return decode_image(Path(path).read_bytes())
    except (BadImage, OSError) as e:
        log.warning("skipping %s: %s", path, getattr(e, "reason", e))
        return None


def source_images(model: AtlasModel, source: int, photos: Sequence[str], *, augment: int = 24, seed: int = 0,
                  batch_size: int = 32) -> tuple[torch.Tensor, int]:
    """Views of the source-class ``photos`` that the model classifies as ``source`` (top-1):
    ``augment`` views per photo when there are few photos (one view each from 8 photos on).
    Returns the images and the number of views tried; a clear error when none is classified
    as the source."""
    gen = torch.Generator().manual_seed(seed)
    per = max(1, augment if len(photos) < 8 else 1)
    views = []
    for p in photos:
        img = _load(p, model)
        if img is not None:
            views.append(augment_photo(img, model, per, gen))
    if not views:
        raise ValueError("none of the source photos could be read")
    x = torch.cat(views)
    ok = predict(model, x, batch_size).argmax(1) == source
    if not ok.any():
        names = model.class_names or imagenet_class_names()
        raise ValueError(f"the model classifies none of the {len(x)} views of {len(photos)} photo(s) of "
                         f"{names[source]!r} as {names[source]!r}; give photos it gets right (--images)")
    return x[ok], len(x)


# ---- the whole attack -----------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if self.patch not in ("optvis", "icon"):
            raise ValueError(f"patch must be 'optvis' (a fresh feature visualization) or 'icon', not {self.patch!r}")
        if self.static_corner not in CORNERS:
            raise ValueError(f"static_corner must be one of {', '.join(CORNERS)}, not {self.static_corner!r}")
        self.sizes = tuple(float(s) for s in self.sizes)
        if not self.sizes or not all(0 < s <= 1 for s in self.sizes):
            raise ValueError(f"sizes are fractions of the image width in (0, 1], got {self.sizes}")
        if self.candidates < 1:
            raise ValueError("candidates must be at least 1")
        if not 0 < self.selection_fraction < 1:
            raise ValueError(f"selection_fraction is the share of views the patches are chosen on, in (0, 1); "
                             f"got {self.selection_fraction}")


@dataclass
class FamilyResult:
    """One family of patches (atlas, random cell, noise): which member was chosen, and its effect
    on the held-out source images (and on the universal images)."""

    family: str
    members: list[str]
    selection_score: list[float]
    chosen: int
    static: list[float]
    dynamic: list[float]
    dynamic_any_size: float
    prob_before: float
    prob_static: list[float]
    prob_dynamic: list[float]
    universal_flip: list[float] | None = None
    universal_changed: list[float] | None = None
    universal_prob: list[float] | None = None
    n_test: int = 0
    static_ci: list[list[float]] = field(default_factory=list)
    dynamic_ci: list[list[float]] = field(default_factory=list)
    dynamic_any_size_ci: list[float] = field(default_factory=list)

    def with_intervals(self, n: int) -> FamilyResult:
        """Fill the 95% Wilson intervals of the rates, measured on ``n`` held-out views."""
        self.n_test = n
        self.static_ci = [list(wilson_interval(r * n, n)) for r in self.static]
        self.dynamic_ci = [list(wilson_interval(r * n, n)) for r in self.dynamic]
        self.dynamic_any_size_ci = list(wilson_interval(self.dynamic_any_size * n, n))
        return self


@dataclass
class AttackReport:
    """What :func:`run_attack` measured; ``to_json`` is the report file."""

    source: str
    target: str
    source_index: int
    target_index: int
    model: str
    layer: str
    run_dir: str
    level: int
    settings: dict[str, Any]
    candidates: list[dict[str, Any]]
    random_cells: list[dict[str, Any]]
    n_source_views: int
    n_source_correct: int
    n_selection: int
    n_test: int
    families: dict[str, FamilyResult]
    universal_images: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        """Markdown: success rates (held-out source views) per family and patch size."""
        sizes = self.settings["sizes"]
        head = "| patch | " + " | ".join(f"{int(round(100 * s))}%" for s in sizes) + " | best size |"
        rows = [f"**{self.source} -> {self.target}**: {self.n_test} held-out views (static corner "
                f"{self.settings['static_corner']} / dynamic best corner), success = top-1 becomes the target; "
                "[95% Wilson interval] of the dynamic rate",
                "", head, "|---|" + "---|" * (len(sizes) + 1)]
        for fam in FAMILIES:
            r = self.families.get(fam)
            if r is None:
                continue
            cis = r.dynamic_ci or [[float("nan")] * 2] * len(r.dynamic)
            cells = " | ".join(f"{100 * a:.0f} / {100 * b:.0f} [{100 * lo:.0f}-{100 * hi:.0f}]"
                               for a, b, (lo, hi) in zip(r.static, r.dynamic, cis))
            lo, hi = r.dynamic_any_size_ci or [float("nan")] * 2
            rows.append(f"| {fam.replace('_', ' ')} ({r.members[r.chosen]}) | {cells} | "
                        f"{100 * r.dynamic_any_size:.0f} [{100 * lo:.0f}-{100 * hi:.0f}] |")
        if self.universal_images:
            rows += ["", f"Universal: flip-to-target rate over {self.universal_images} images of other classes "
                         f"(static corner {self.settings['static_corner']})", "",
                     "| patch | " + " | ".join(f"{int(round(100 * s))}%" for s in sizes) + " |",
                     "|---|" + "---|" * len(sizes)]
            for fam in FAMILIES:
                r = self.families.get(fam)
                if r is not None:
                    rows.append(f"| {fam.replace('_', ' ')} | "
                                + " | ".join(f"{100 * v:.1f}" for v in (r.universal_flip or [])) + " |")
        return "\n".join(rows)


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
    from atlas.store.layout import read_layout

    t0 = time.perf_counter()
    secs: dict[str, float] = {}
    names = model.class_names or imagenet_class_names()
    s_idx, t_idx = class_index(settings.source, names), class_index(settings.target, names)
    if s_idx == t_idx:
        raise ValueError(f"source and target are the same class ({names[s_idx]!r})")
    run_dir = Path(run_dir)
    if not (run_dir / "layout.h5").is_file():
        raise ValueError(f"{run_dir} holds no layout.h5; give the folder of an atlas run (after `atlas reduce`)")
    layer = str(read_layout(run_dir / "layout.h5").attrs.get("layer"))
    model.layer(layer)
    src_paths = _class_photos(run_dir, s_idx, images, names, "--images")
    tgt_paths = _class_photos(run_dir, t_idx, target_images, names, "--target-images")

    # the class-comparison atlas, from views of both classes' photos (their own seed, so that the
    # views the patches are measured on are other crops)
    tc = time.perf_counter()
    gen = torch.Generator().manual_seed(settings.seed + 1)
    per = lambda ps: max(1, settings.augment if len(ps) < 8 else 1)  # noqa: E731
    views = [augment_photo(im, model, per(ps), gen)
             for ps in (tgt_paths, src_paths) for im in (_load(q, model) for q in ps) if im is not None]
    comp_x = torch.cat(views)
    rows = comparison_rows(model, layer, comp_x, s_idx, t_idx, batch_size=settings.batch_size,
                           progress=progress)
    cands, rands, level = comparison_cells(run_dir, rows, level=settings.level, k=settings.candidates,
                                           n_random=settings.random_cells, seed=settings.seed, class_names=names)
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

    # patches
    tr = time.perf_counter()
    if settings.patch == "icon":
        atlas_p, rand_p = icon_patches(cands), icon_patches(rands)
    else:
        dirs = np.stack([c.direction for c in [*cands, *rands]])
        both = render_patches(model, layer, dirs, px=settings.patch_px, steps=settings.steps, seed=settings.seed,
                              progress=progress)
        atlas_p, rand_p = both[: len(cands)], both[len(cands):]
    noise_p = noise_patches(settings.noise_patches, settings.patch_px, settings.seed)
    example_p = example_patches(cands, rows, comp_x, settings.patch_px)
    secs["patches"] = time.perf_counter() - tr
    fam_patches = {"atlas": atlas_p, "example": example_p, "random_cell": rand_p, "noise": noise_p}
    fam_names = {"atlas": [c.name for c in cands], "example": [f"example of {c.name}" for c in cands],
                 "random_cell": [c.name for c in rands], "noise": [f"noise {i}" for i in range(len(noise_p))]}

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


def _class_photos(run_dir: Path, c: int, given: str | os.PathLike | None, names: Sequence[str], flag: str) -> list[str]:
    """Photos of class ``c``: those given, else those labelled ``c`` in the atlas's image source."""
    if given is not None:
        return [q for q, _ in _photo_paths(given)]
    from atlas.store.activations import ActivationsFile

    path = run_dir / "activations.h5"
    if not path.is_file():
        raise ValueError(f"{run_dir} holds no activations.h5 to find photos of {names[c]!r} in; give them with {flag}")
    with ActivationsFile(path) as acts:
        root = str(acts.attrs.get("source", ""))
        labels, keys = acts.image_labels(), acts.image_keys()
    out = [str(Path(root) / k) for k, lab in zip(keys, labels) if lab == c and "::" not in k]
    if not out:
        raise ValueError(f"the atlas's images ({root}) hold no photo labelled {names[c]!r}; give photos of it with {flag}")
    return out


def _cand_json(c: Candidate) -> dict[str, Any]:
    return {"cell": [c.size, c.iy, c.ix], "score": c.score, "target_attribution": c.target_attribution,
            "source_attribution": c.source_attribution, "count": c.count, "classes": c.classes[:5]}


def _universal_images(model: AtlasModel, spec: str | os.PathLike, *, exclude: Sequence[int], limit: int | None,
                      batch_size: int, progress: bool) -> tuple[torch.Tensor, int]:
    """Photos of other classes that the model classifies correctly (when labelled) or at all."""
    from tqdm.auto import tqdm

    items = [(p, lab) for p, lab in _photo_paths(spec) if lab not in exclude]
    if limit:
        items = items[:: max(1, len(items) // limit)][:limit]
    xs, labels = [], []
    for p, lab in tqdm(items, desc="load universal images", unit="img", disable=not progress, leave=False):
        img = _load(p, model)
        if img is not None:
            xs.append(model.image_transform(img))
            labels.append(lab)
    if not xs:
        raise ValueError(f"no readable images in {spec}")
    x = torch.stack(xs)
    top1 = predict(model, x, batch_size).argmax(1).numpy()
    lab = np.asarray(labels)
    keep = np.where(lab >= 0, top1 == lab, ~np.isin(top1, exclude)) & ~np.isin(top1, exclude)
    if not keep.any():
        raise ValueError(f"none of the {len(x)} universal images of {spec} is classified correctly (when labelled) "
                         "as a class other than the source and target; give other photos")
    return x[torch.from_numpy(keep)], int(keep.sum())


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


# ---- report ---------------------------------------------------------------------------------------


def write_report(report: AttackReport, out_dir: str | os.PathLike, model: AtlasModel, test_x: torch.Tensor,
                 patches: dict[str, torch.Tensor], effects: dict[str, list[PatchEffect]],
                 cands: Sequence[Candidate], test: np.ndarray, univ_x: torch.Tensor | None = None) -> Path:
    """``report.json``, ``candidates.png`` (the patches with their cells' scores and classes),
    ``examples.png`` (patched held-out views with the labels before and after) and
    ``success.png`` (success rate against patch size, per family) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    (out / "report.md").write_text(report.table() + "\n")
    names = model.class_names or imagenet_class_names()
    fams = report.families

    # candidates
    k = len(cands)
    has_examples = "example" in patches
    fig, axes = plt.subplots(2 if has_examples else 1, k + 2, figsize=(2.6 * (k + 2), 6.4 if has_examples else 3.3),
                             squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.axis("off")
        if i < k:
            c = cands[i]
            ax.imshow(patches["atlas"][i].permute(1, 2, 0).numpy())
            star = " (chosen)" if i == fams["atlas"].chosen else ""
            ax.set_title(f"{c.name}{star}\nscore {c.score:+.3f}\n{', '.join(c.classes[:2])[:34]}", fontsize=8)
        else:
            fam = "random_cell" if i == k else "noise"
            r = fams[fam]
            ax.imshow(patches[fam][r.chosen].permute(1, 2, 0).numpy())
            ax.set_title(f"baseline: {r.members[r.chosen]}", fontsize=8)
    if has_examples:
        for i, ax in enumerate(axes[1]):
            ax.axis("off")
            if i < k:
                ax.imshow(patches["example"][i].permute(1, 2, 0).numpy())
                star = " (chosen)" if i == fams["example"].chosen else ""
                ax.set_title(f"photo crop of {cands[i].name}{star}", fontsize=8)
    fig.suptitle(f"{report.source} -> {report.target}: atlas neighbourhoods by target - source attribution", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "candidates.png", dpi=100)
    plt.close(fig)

    # examples: up to 6 held-out views, atlas patch at the best corner, size 40% (or the largest)
    sizes = list(report.settings["sizes"])
    si = min(range(len(sizes)), key=lambda i: abs(sizes[i] - 0.4))
    e = effects["atlas"][fams["atlas"].chosen].subset(test)
    n = min(6, len(test_x))
    before = predict(model, test_x[:n])
    fig, axes = plt.subplots(2, n, figsize=(2.7 * n, 6.0), squeeze=False)
    for j in range(n):
        corner = list(CORNERS)[int(np.argmax(e.target_prob[si, :, j]))]
        xp = paste(test_x[j:j + 1], patches["atlas"][fams["atlas"].chosen], sizes[si], corner)
        after = predict(model, xp)[0]
        for row, (img, p) in enumerate(((test_x[j], before[j]), (xp[0], after))):
            ax = axes[row, j]
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.axis("off")
            top = int(p.argmax())
            color = "#d62728" if top == report.target_index else "black"
            ax.set_title(f"{names[top][:20]} {float(p[top]):.2f}\n{report.target[:14]}: {float(p[report.target_index]):.2f}",
                         fontsize=8, color=color)
    axes[0, 0].text(-0.1, 0.5, "before", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "after", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"{report.source} + atlas patch ({int(round(100 * sizes[si]))}% width, best corner)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=100)
    plt.close(fig)

    # success vs size
    panels = 2 if report.universal_images else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), squeeze=False)
    colors = {"atlas": "#d62728", "example": "#2ca02c", "random_cell": "#7f7f7f", "noise": "#1f77b4"}
    pct = [100 * s for s in sizes]
    ax = axes[0, 0]
    for fam in (f for f in FAMILIES if f in fams):
        r = fams[fam]
        ax.plot(pct, [100 * v for v in r.dynamic], "-o", color=colors[fam], label=f"{fam.replace('_', ' ')}, dynamic")
        ax.plot(pct, [100 * v for v in r.static], "--", color=colors[fam], alpha=0.7, label=f"{fam.replace('_', ' ')}, static")
    ax.set_xlabel("patch size (% of image width)")
    ax.set_ylabel(f"% of {report.source} views -> {report.target}")
    ax.set_ylim(-2, 102)
    ax.set_title(f"held-out views (n={report.n_test})", fontsize=10)
    ax.legend(fontsize=7)
    if report.universal_images:
        ax = axes[0, 1]
        for fam in (f for f in FAMILIES if f in fams):
            ax.plot(pct, [100 * v for v in fams[fam].universal_flip or []], "-o", color=colors[fam],
                    label=fam.replace("_", " "))
        ax.set_xlabel("patch size (% of image width)")
        ax.set_ylabel(f"% flipped to {report.target}")
        ax.set_title(f"universal: {report.universal_images} photos of other classes", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "success.png", dpi=100)
    plt.close(fig)
    for fam, p in patches.items():
        r = fams[fam]
        arr = (p[r.chosen].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / f"patch-{fam}.png")
    return out


__all__ = [
    "CORNERS",
    "AttackReport",
    "AttackSettings",
    "Candidate",
    "FamilyResult",
    "PatchEffect",
    "augment_photo",
    "ComparisonRows",
    "comparison_cells",
    "comparison_rows",
    "evaluate_patch",
    "example_patches",
    "icon_patches",
    "noise_patches",
    "paste",
    "predict",
    "render_patches",
    "run_attack",
    "source_images",
    "wilson_interval",
    "write_report",
]
