"""Explain one photo: attribution maps over its pixels, and its activations' attribution at a layer.

:func:`explain_photo` runs every attribution method of :mod:`atlas.tools.attribution` on one photo for
one class (default: the model's top-1), plus the paper's per-position attribution at a layer
(``h . d logit / d h`` at every position of the layer's grid: where in the photo the layer's
activations push toward the class), and :func:`explain_figure` draws them over the photo with
the class probabilities. :func:`place_on_atlas` projects the photo's activations onto an
existing atlas with the layout's fitted UMAP (``transform``), so the figure and the viewer
(:func:`write_overlay`) show where the photo lives in the atlas and which neighbourhoods push
toward the class. :func:`evaluate_methods` scores the methods by deletion / insertion AUC over
many photos.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.models import AtlasModel
from atlas.resources import class_index
from atlas.tools import attribution as attr

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("saliency", "guided_backprop", "deconvnet", "grad_cam", "grad_cam_pp", "cam",
                   "integrated_gradients")
"""The methods that take about a second or less a photo on a CPU (IG: ``ig_steps`` backward passes)."""

ALL_METHODS = (*DEFAULT_METHODS, "occlusion", "igos")
"""Every method; occlusion and I-GOS cost tens to hundreds of forward passes a photo."""

SMOOTHABLE = ("saliency", "guided_backprop", "deconvnet")
"""The gradient maps that ``smooth`` (SmoothGrad) averages over noisy copies."""


@dataclass(frozen=True)
class MethodSettings:
    """Settings of the methods that have any: Grad-CAM / Grad-CAM++ layer (None: the model's
    last spatial layer, :func:`atlas.tools.attribution.last_spatial_layer`, as the paper defines it;
    CAM finds its own), integrated-gradient steps, occlusion patch and stride (pixels), and
    I-GOS iterations, integrated-gradient steps and mask side. ``seed`` seeds SmoothGrad's and
    I-GOS's noise."""

    gradcam_layer: str | None = None
    ig_steps: int = 32
    occlusion_patch: int = 32
    occlusion_stride: int = 16
    igos_iterations: int = 10
    igos_steps: int = 10
    igos_size: int = 28
    seed: int = 0

    def describe(self, methods: Sequence[str]) -> str:
        """The settings that matter for ``methods``, for a table caption."""
        parts = []
        if {"grad_cam", "grad_cam_pp"} & set(methods):
            parts.append(f"Grad-CAM(++) at {self.gradcam_layer or 'the last spatial layer'}")
        if "integrated_gradients" in methods:
            parts.append(f"IG {self.ig_steps} steps")
        if "occlusion" in methods:
            parts.append(f"occlusion patch {self.occlusion_patch} stride {self.occlusion_stride}")
        if "igos" in methods:
            parts.append(f"I-GOS {self.igos_iterations} iterations x {self.igos_steps} IG steps, "
                         f"{self.igos_size}x{self.igos_size} mask")
        return ", ".join(parts)


def method_map(model: AtlasModel, x: torch.Tensor, target: int, method: str, settings: MethodSettings,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, float | None]:
    """One attribution map (1, H, W) of ``x`` (1, 3, H, W) for class ``target`` with ``method``
    and ``settings``; also integrated gradients' completeness error (None for other methods)."""
    t = torch.tensor([target], device=x.device)
    if method == "integrated_gradients":
        ig = attr.integrated_gradients(model, x, t, steps=settings.ig_steps)
        return ig.map.abs(), float(ig.completeness_error[0])
    if method == "grad_cam":
        return attr.grad_cam(model, x, t, layer=settings.gradcam_layer), None
    if method == "grad_cam_pp":
        return attr.grad_cam_pp(model, x, t, layer=settings.gradcam_layer), None
    if method == "occlusion":
        return attr.occlusion(model, x, t, patch=settings.occlusion_patch, stride=settings.occlusion_stride), None
    if method == "igos":
        return attr.igos(model, x, t, iterations=settings.igos_iterations, ig_steps=settings.igos_steps,
                         size=settings.igos_size, generator=generator).map, None
    if method not in attr.METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(attr.METHODS)}")
    return attr.METHODS[method](model, x, t), None


@dataclass
class Explanation:
    """Everything :func:`explain_photo` computed for one photo.

    ``image``: (3, S, S) the photo as the model saw it; ``maps``: method -> (S, S);
    ``probs``: (K,) softmax; ``layer_attribution``: (H, W) per-position attribution to ``target``
    at ``layer``; ``layer_activations``: (H*W, C) the activation vectors (for atlas placement);
    ``seconds``: method -> time; ``gradcam_layer``: the layer Grad-CAM(++) used (None if neither ran).
    """

    path: str
    target: int
    target_name: str
    image: torch.Tensor
    probs: np.ndarray
    maps: dict[str, np.ndarray]
    layer: str
    layer_attribution: np.ndarray
    layer_activations: np.ndarray
    ig_completeness_error: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    gradcam_layer: str | None = None


def load_photo(path: str | os.PathLike, model: AtlasModel) -> torch.Tensor:
    """A photo file -> (1, 3, S, S) as the model sees it; a clear error for non-images."""
    from atlas.data import open_photo

    return model.image_transform(open_photo(path))[None].to(model.device)


def layer_position_attribution(model: AtlasModel, x: torch.Tensor, target: int, layer: str
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-position attribution ``sum_c h_c * d logit_target / d h_c`` at every position of a
    spatial ``layer`` for one image ``x`` (1, 3, S, S): returns ((H, W), activations (H*W, C)).
    The channel sum of :func:`atlas.tools.attribution.layer_gradient_x_activation`."""
    prod, h = attr.layer_gradient_x_activation(model, x, target, layer)
    return prod.sum(1)[0].cpu().numpy(), h[0].flatten(1).T.cpu().numpy()


def explain_photo(model: AtlasModel, photo: str | os.PathLike, *, target: int | str | None = None,
                  layer: str = "inception4c", methods: Sequence[str] = DEFAULT_METHODS,
                  gradcam_layer: str | None = None, ig_steps: int = 32, smooth: bool = False,
                  smooth_samples: int = 16, seed: int = 0, occlusion_patch: int = 32, occlusion_stride: int = 16,
                  igos_iterations: int = 10, igos_steps: int = 10) -> Explanation:
    """Attribution maps of ``photo`` for ``target`` (index, class name or None = top-1).

    ``methods``: names of :data:`atlas.tools.attribution.METHODS` (:data:`ALL_METHODS` for every one).
    ``gradcam_layer`` (Grad-CAM and Grad-CAM++) defaults to the model's last spatial layer
    (:func:`atlas.tools.attribution.last_spatial_layer`, ``inception5b`` for InceptionV1), where the
    paper defines the method; CAM uses the layer that the classifier pools. ``layer`` is the
    per-position attribution's. With ``smooth``, the gradient maps (saliency, guided backprop,
    deconvnet) are averaged over ``smooth_samples`` noisy copies (SmoothGrad).
    """
    attr.check_methods(methods)
    model.layer(layer)  # unknown layers raise with close matches
    x = load_photo(photo, model)
    with torch.no_grad():
        probs = model(x).softmax(1)[0].cpu().numpy()
    names = model.class_names or [str(i) for i in range(len(probs))]
    if target is None:
        t = int(probs.argmax())
    elif isinstance(target, str):
        t = class_index(target, names)
    else:
        t = int(target)
    gradcam_layer = _gradcam_layer(model, methods, gradcam_layer)
    settings = MethodSettings(gradcam_layer=gradcam_layer, ig_steps=ig_steps, occlusion_patch=occlusion_patch,
                              occlusion_stride=occlusion_stride, igos_iterations=igos_iterations,
                              igos_steps=igos_steps, seed=seed)
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    ig_err = None
    gen = torch.Generator().manual_seed(seed)
    for m in methods:
        t0 = time.perf_counter()
        if smooth and m in SMOOTHABLE:
            amap = attr.smoothgrad(attr.METHODS[m], model, x, t, samples=smooth_samples, generator=gen)
        else:
            amap, err = method_map(model, x, t, m, settings, gen)
            ig_err = err if err is not None else ig_err
        maps[m] = amap[0].cpu().numpy()
        seconds[m] = time.perf_counter() - t0
    la, vecs = layer_position_attribution(model, x, t, layer)
    return Explanation(str(photo), t, names[t], x[0].cpu(), probs, maps, layer, la, vecs, ig_err, seconds,
                       gradcam_layer)


def _gradcam_layer(model: AtlasModel, methods: Sequence[str], layer: str | None) -> str | None:
    """Grad-CAM(++)'s layer for ``methods``: ``layer`` (checked) or the model's last spatial layer;
    None when neither method runs."""
    if not {"grad_cam", "grad_cam_pp"} & set(methods):
        return layer
    if layer is None:
        return attr.last_spatial_layer(model)
    model.layer(layer)  # unknown layers raise with close matches
    return layer


def explain_figure(e: Explanation, out: str | os.PathLike, class_names: Sequence[str] | None = None,
                   placement: AtlasPlacement | None = None) -> Path:
    """Draw the photo, each map as a heatmap over it, the layer attribution grid, the top-5
    class probabilities and, with ``placement``, the photo's positions over the atlas picture
    (stitched from the run's tiles) into one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = class_names or [str(i) for i in range(len(e.probs))]
    img = e.image.permute(1, 2, 0).numpy()
    panels = ["photo", *e.maps, "layer"]
    ncols = min(len(panels) + 1, 6)  # the probability bars take the last cell
    nrows = -(-(len(panels) + 1) // ncols)
    atlas_rows = 0 if placement is None else 2  # a taller row: the atlas with the photo's points
    fig = plt.figure(figsize=(3.1 * ncols, 3.6 * nrows + 3.2 * atlas_rows))
    grid = fig.add_gridspec(nrows + (1 if atlas_rows else 0), ncols,
                            height_ratios=[1] * nrows + ([atlas_rows] if atlas_rows else []))
    cells = [grid[i // ncols, i % ncols] for i in range(len(panels) + 1)]
    axes = [fig.add_subplot(c) for c in cells[:len(panels)]]
    if placement is None:
        bars = fig.add_subplot(cells[len(panels)])
    else:
        _atlas_panel(fig.add_subplot(grid[nrows, : max(1, ncols - 2)]), placement)
        bars = fig.add_subplot(grid[nrows, max(1, ncols - 2):])
    for ax, name in zip(axes, panels):
        ax.axis("off")
        ax.imshow(img)
        if name == "photo":
            ax.set_title(Path(e.path).name[:28], fontsize=9)
        elif name == "layer":
            a = e.layer_attribution
            lim = np.abs(a).max() or 1.0
            ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.6, extent=(0, img.shape[1], img.shape[0], 0),
                      interpolation="nearest")
            ax.set_title(f"{e.layer}: h·∂logit/∂h", fontsize=9)
        else:
            m = e.maps[name]
            hi = np.percentile(m, 99.5) or (m.max() or 1.0)  # a few peak pixels would wash out the rest
            m = np.clip((m - m.min()) / (hi - m.min() or 1.0), 0, 1)
            ax.imshow(img * 0.35)
            ax.imshow(m, cmap="inferno", alpha=0.75)
            title = _TITLES.get(name, name.replace("_", " "))
            if name in ("grad_cam", "grad_cam_pp") and e.gradcam_layer:
                title += f" ({e.gradcam_layer})"
            if name == "integrated_gradients" and e.ig_completeness_error is not None:
                title += f"\ncompleteness err {100 * e.ig_completeness_error:.1f}%"
            ax.set_title(title, fontsize=9)
    ax = bars
    top = np.argsort(e.probs)[::-1][:5]
    ax.barh(range(5)[::-1], e.probs[top], color=["#d62728" if c == e.target else "#1f77b4" for c in top])
    ax.set_yticks(range(5)[::-1], [names[c][:18] for c in top], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_title(f"explaining: {e.target_name}", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


_TITLES = {"grad_cam": "Grad-CAM", "grad_cam_pp": "Grad-CAM++", "cam": "CAM", "igos": "I-GOS",
           "integrated_gradients": "integrated gradients", "guided_backprop": "guided backprop"}


def atlas_background(ax, run_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Draw a run's atlas picture (or a blank square without tiles) on ``ax``; returns the map
    from layout coordinates (N, 2) in [0, 1] to the picture's pixels."""
    ax.axis("off")
    tiles = run_dir / "tiles"
    if (tiles / "manifest.json").is_file():
        from atlas.stages.tiles import atlas_image

        picture, to_px = atlas_image(tiles)
        ax.imshow(picture)
        return to_px
    side = 512
    ax.imshow(np.full((side, side, 3), 0.96))
    return lambda xy: np.asarray(xy) * side


def _atlas_panel(ax, placement: AtlasPlacement) -> None:
    """The atlas picture (or a blank square without tiles) with the photo's positions on it."""
    to_px = atlas_background(ax, placement.run_dir)
    ok = np.isfinite(placement.xy).all(1)
    px = to_px(placement.xy[ok])
    a = placement.attribution[ok]
    lim = float(np.abs(a).max()) or 1.0
    order = np.argsort(np.abs(a))  # strongest on top
    ax.scatter(px[order, 0], px[order, 1], c=a[order], cmap="RdBu_r", vmin=-lim, vmax=lim,
               s=6 + 60 * np.abs(a[order]) / lim, edgecolors="black", linewidths=0.3)
    ax.set_title(f"where the photo lives in the atlas ({placement.layer}): {int(ok.sum())} positions, "
                 "red = toward the class, blue = away", fontsize=10)


@dataclass
class AtlasPlacement:
    """Where the positions of one photo's layer activations land on an atlas.

    ``P = H * W`` positions in row-major order; ``xy``: (P, 2) layout ``(x, y)`` in [0, 1] (NaN
    for a position the layout's metric cannot place, e.g. all zeros under cosine);
    ``positions``: (P, 2) ``(y, x)`` in the layer grid; ``attribution``: (P,) ``h . d logit / d h``
    toward the explained class; ``neighborhoods``: the cells of grid ``level`` that the photo's
    positions fall in, by summed attribution (descending), each a dict with ``size``, ``iy``,
    ``ix``, ``positions``, ``attribution`` and ``classes`` (the cell's top classes by the atlas's
    own attribution; empty for a cell the atlas dropped).
    """

    run_dir: Path
    layer: str
    grid_shape: tuple[int, int]
    xy: np.ndarray
    positions: np.ndarray
    attribution: np.ndarray
    level: int
    neighborhoods: list[dict]
    layout_hash: str = ""

    def describe(self, limit: int = 5) -> str:
        lines = [f"{int(np.isfinite(self.xy).all(1).sum())} of {len(self.xy)} positions placed on "
                 f"{self.run_dir} ({self.layer}); neighbourhoods of grid {self.level} by attribution:"]
        for nb in self.neighborhoods[:limit]:
            classes = ", ".join(nb["classes"][:3]) or "(cell not in the atlas)"
            lines.append(f"  cell ({nb['iy']:>2}, {nb['ix']:>2}): {nb['positions']:>3} positions, "
                         f"attribution {nb['attribution']:+.3f}  [{classes}]")
        return "\n".join(lines)


def place_on_atlas(e: Explanation, run_dir: str | os.PathLike, *, level: int | None = None,
                   class_names: Sequence[str] | None = None, est=None) -> AtlasPlacement:
    """Project ``e.layer_activations`` onto the atlas in ``run_dir`` (its ``layout.h5`` and the
    fitted model beside it; ``cells.h5`` names the neighbourhoods).

    ``level``: the grid size used to group positions into neighbourhoods (default: the middle
    size of ``cells.h5``). ``est``: the layout's fitted placer (:func:`atlas.stages.reduce.load_placer`),
    to load it once when placing many photos. Raises ``ValueError`` when the atlas was made at
    another layer.
    """
    from atlas.resources import imagenet_class_names
    from atlas.stages.grid import grid_cells
    from atlas.stages.reduce import load_placer, project
    from atlas.store.cells import cells_attrs, read_cells
    from atlas.store.layout import read_layout

    run_dir = Path(run_dir)
    layout_path, cells_path = run_dir / "layout.h5", run_dir / "cells.h5"
    if not layout_path.is_file():
        raise ValueError(f"{run_dir} holds no layout.h5; give the folder of an atlas run (after `atlas reduce`)")
    attrs = read_layout(layout_path).attrs
    if str(attrs.get("layer")) != e.layer:
        raise ValueError(f"the atlas in {run_dir} was made at layer {attrs.get('layer')!r}, not {e.layer!r}; "
                         f"explain with --layer {attrs.get('layer')}")
    if attrs.get("class_index", -1) not in (-1, None):
        log.info("%s is a class atlas (class %s); placing on it anyway", run_dir, attrs.get("class_index"))
    est = est if est is not None else load_placer(layout_path)
    xy = project(layout_path, e.layer_activations.astype(np.float32), est=est)
    h, w = e.layer_attribution.shape
    yy, xx = np.divmod(np.arange(h * w), w)
    positions = np.stack([yy, xx], 1).astype(np.int32)
    a = e.layer_attribution.reshape(-1).astype(np.float64)
    neighborhoods: list[dict] = []
    size = level or 0
    if cells_path.is_file():
        sizes = [int(v) for v in cells_attrs(cells_path)["sizes"]]
        size = level or sizes[len(sizes) // 2]
        if size not in sizes:
            raise ValueError(f"{cells_path} has grid sizes {sizes}, not {size}")
        cells = read_cells(cells_path, [size])[size]
        names = list(class_names or imagenet_class_names())
        ok = np.isfinite(xy).all(1)
        ids = grid_cells(np.clip(xy[ok], 0.0, 1.0), size)
        where = {int(c): i for i, c in enumerate(cells.cell_id)}
        for cid in np.unique(ids):
            sel = ids == cid
            i = where.get(int(cid))
            classes = [] if i is None else [
                names[int(c)] if 0 <= int(c) < len(names) else str(int(c))
                for c, v in zip(cells.top_classes[i], cells.top_values[i]) if v > 0]
            neighborhoods.append({"size": size, "iy": int(cid // size), "ix": int(cid % size),
                                  "positions": int(sel.sum()), "attribution": float(a[ok][sel].sum()),
                                  "classes": classes})
        neighborhoods.sort(key=lambda nb: -nb["attribution"])
    return AtlasPlacement(run_dir, e.layer, (h, w), xy, positions, a, size, neighborhoods,
                          str(attrs.get("settings_hash", "")))


def overlay_name(photo: str | os.PathLike) -> str:
    """A URL- and file-safe overlay name from a photo path."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(photo).stem).strip("-.")[:64] or "photo"


def write_overlay(e: Explanation, placement: AtlasPlacement, tiles_dir: str | os.PathLike | None = None,
                  name: str | None = None) -> Path:
    """Save the placement as an overlay of the atlas viewer: ``TILES/overlays/NAME.json``, listed
    in ``TILES/overlays/index.json`` (a later overlay of the same name replaces it).

    The viewer (``atlas serve``) lists the overlays in its "Photos" box; each shows the photo's
    positions as points over the atlas, red where they push toward the class and blue where
    they push away, sized by the size of the attribution.
    """
    from atlas.stages.tiles import read_manifest

    tiles = Path(tiles_dir) if tiles_dir is not None else placement.run_dir / "tiles"
    manifest = read_manifest(tiles)
    if manifest.get("layer") not in (None, "", e.layer):
        raise ValueError(f"{tiles} shows layer {manifest.get('layer')!r}, not {e.layer!r}")
    name = overlay_name(name or e.path)
    thumb = io.BytesIO()
    img = Image.fromarray((e.image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    img.thumbnail((160, 160))
    img.save(thumb, format="JPEG", quality=85)
    ok = np.isfinite(placement.xy).all(1)
    doc = {
        "kind": "atlas-overlay", "format": 1, "name": name, "photo": Path(e.path).name,
        "class": e.target_name, "class_index": e.target, "probability": round(float(e.probs[e.target]), 4),
        "layer": e.layer, "grid": list(placement.grid_shape), "layout_hash": placement.layout_hash,
        "max_abs": float(np.abs(placement.attribution).max() or 1.0),
        "thumb": "data:image/jpeg;base64," + base64.b64encode(thumb.getvalue()).decode(),
        "points": [{"x": round(float(x), 5), "y": round(float(y), 5), "pos": [int(p[0]), int(p[1])],
                    "a": round(float(v), 5)}
                   for (x, y), p, v, good in zip(placement.xy, placement.positions, placement.attribution, ok) if good],
        "neighborhoods": placement.neighborhoods[:8],
    }
    folder = tiles / "overlays"
    folder.mkdir(exist_ok=True)
    out = folder / f"{name}.json"
    _write_json(out, doc)
    index_path = folder / "index.json"
    try:
        index = json.loads(index_path.read_text())["overlays"]
    except (OSError, ValueError, KeyError, TypeError):
        index = []
    index = [o for o in index if isinstance(o, dict) and o.get("name") != name]
    index.append({"name": name, "file": f"overlays/{name}.json", "photo": doc["photo"], "class": doc["class"],
                  "probability": doc["probability"]})
    _write_json(index_path, {"kind": "atlas-overlays", "overlays": index})
    return out


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


@dataclass
class MethodScores:
    """Per method: mean deletion AUC (lower is better), mean insertion AUC (higher is better),
    mean seconds per photo (the map only, not its curves), the number of photos, and the AUCs of
    every photo (``per_photo_deletion`` / ``per_photo_insertion``: method -> list, photo order)
    for paired comparisons."""

    deletion_auc: dict[str, float]
    insertion_auc: dict[str, float]
    seconds: dict[str, float]
    photos: int
    ig_completeness_error: float | None = None
    per_photo_deletion: dict[str, list[float]] = field(default_factory=dict)
    per_photo_insertion: dict[str, list[float]] = field(default_factory=dict)
    gradcam_layer: str | None = None

    def table(self) -> str:
        rows = ["| method | deletion AUC (lower is better) | insertion AUC (higher is better) | s / photo |",
                "|---|---|---|---|"]
        for m in self.deletion_auc:
            rows.append(f"| {m} | {self.deletion_auc[m]:.3f} | {self.insertion_auc[m]:.3f} | {self.seconds[m]:.2f} |")
        return "\n".join(rows)

    def against_random(self) -> str:
        """One line a method: its AUCs minus the random map's, photo by photo (mean and 95% interval)."""
        lines = []
        for m in self.per_photo_deletion:
            if m == "random" or "random" not in self.per_photo_deletion:
                continue
            cells = []
            for curve in ("deletion", "insertion"):
                d, lo, hi, lower = self.paired(m, "random", curve)
                cells.append(f"{curve} {d:+.3f} ({lo:+.3f} .. {hi:+.3f}), lower on {100 * lower:.0f}% of photos")
            lines.append(f"{m} - random: " + "; ".join(cells))
        return "\n".join(lines)

    def paired(self, a: str, b: str, curve: str = "deletion") -> tuple[float, float, float, float]:
        """Photo by photo ``AUC(a) - AUC(b)`` on ``curve`` ("deletion" or "insertion"): the mean,
        its 95% interval (normal approximation, 1.96 standard errors) and the fraction of photos
        where ``a`` has the lower AUC."""
        per = {"deletion": self.per_photo_deletion, "insertion": self.per_photo_insertion}.get(curve)
        if per is None:
            raise ValueError(f"curve must be 'deletion' or 'insertion', not {curve!r}")
        missing = [m for m in (a, b) if m not in per]
        if missing:
            raise ValueError(f"no per-photo scores of {missing}; evaluated: {', '.join(per)}")
        d = np.asarray(per[a]) - np.asarray(per[b])
        half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        return float(d.mean()), float(d.mean() - half), float(d.mean() + half), float((d < 0).mean())


def evaluate_methods(model: AtlasModel, photos: Sequence[str | os.PathLike], *,
                     methods: Sequence[str] = DEFAULT_METHODS, layer: str | None = None,
                     steps: int = 16, ig_steps: int = 32, occlusion_patch: int = 32, occlusion_stride: int = 16,
                     igos_iterations: int = 10, igos_steps: int = 10, progress: bool = True) -> MethodScores:
    """Deletion / insertion AUC (``steps`` steps, :func:`atlas.tools.attribution.deletion_insertion`)
    of each method over ``photos`` for the model's top-1 class, with a random map as the floor
    to beat. ``layer``: Grad-CAM's and Grad-CAM++'s (default: the model's last spatial layer,
    as in :func:`explain_photo`); the other settings as in :func:`explain_photo`."""
    from tqdm.auto import tqdm

    attr.check_methods(methods)
    settings = MethodSettings(gradcam_layer=_gradcam_layer(model, methods, layer), ig_steps=ig_steps,
                              occlusion_patch=occlusion_patch, occlusion_stride=occlusion_stride,
                              igos_iterations=igos_iterations, igos_steps=igos_steps)
    dele: dict[str, list[float]] = {m: [] for m in [*methods, "random"]}
    ins: dict[str, list[float]] = {m: [] for m in dele}
    secs: dict[str, list[float]] = {m: [] for m in dele}
    ig_errs = []
    gen = torch.Generator().manual_seed(0)
    for p in tqdm(photos, desc="evaluate", unit="photo", disable=not progress):
        x = load_photo(p, model)
        with torch.no_grad():
            t = int(model(x).argmax(1))
        for m in dele:
            t0 = time.perf_counter()
            if m == "random":
                amap = torch.rand(x.shape[-2:], generator=gen)[None]
            else:
                amap, err = method_map(model, x, t, m, settings, gen)
                if err is not None:
                    ig_errs.append(err)
            secs[m].append(time.perf_counter() - t0)
            c = attr.deletion_insertion(model, x, amap.to(x.device), torch.tensor([t]), steps=steps)
            dele[m].append(float(c.deletion_auc[0]))
            ins[m].append(float(c.insertion_auc[0]))
    mean = lambda d: {k: float(np.mean(v)) for k, v in d.items()}  # noqa: E731
    return MethodScores(mean(dele), mean(ins), mean(secs), len(photos),
                        float(np.mean(ig_errs)) if ig_errs else None, dele, ins, settings.gradcam_layer)


def save_image(t: torch.Tensor, path: str | os.PathLike) -> None:
    """(3, H, W) in [0, 1] -> PNG."""
    arr = (t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
