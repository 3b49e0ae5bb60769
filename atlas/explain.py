"""Explain one photo: attribution maps over its pixels, and its activations' attribution at a layer.

:func:`explain_photo` runs every attribution method of :mod:`atlas.attribution` on one photo for
one class (default: the model's top-1), plus the paper's per-position attribution at a layer
(``h . d logit / d h`` at every position of the layer's grid: where in the photo the layer's
activations push toward the class), and :func:`explain_figure` draws them over the photo with
the class probabilities. :func:`evaluate_methods` scores the methods by deletion / insertion
AUC over many photos.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas import attribution as attr
from atlas.models import AtlasModel, capture
from atlas.resources import class_index

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("saliency", "guided_backprop", "grad_cam", "integrated_gradients")


@dataclass
class Explanation:
    """Everything :func:`explain_photo` computed for one photo.

    ``image``: (3, S, S) the photo as the model saw it; ``maps``: method -> (S, S);
    ``probs``: (K,) softmax; ``layer_attribution``: (H, W) per-position attribution to ``target``
    at ``layer``; ``layer_activations``: (H*W, C) the activation vectors (for atlas placement);
    ``seconds``: method -> time.
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


def load_photo(path: str | os.PathLike, model: AtlasModel) -> torch.Tensor:
    """A photo file -> (1, 3, S, S) as the model sees it; a clear error for non-images."""
    from atlas.data import BadImage, decode_image

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        img = decode_image(path.read_bytes())
    except BadImage as e:
        raise ValueError(f"{path} cannot be used: {e.reason}") from e
    return model.image_transform(img)[None].to(model.device)


def layer_position_attribution(model: AtlasModel, x: torch.Tensor, target: int, layer: str
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-position attribution ``sum_c h_c * d logit_target / d h_c`` at every position of a
    spatial ``layer`` for one image ``x`` (1, 3, S, S): returns ((H, W), activations (H*W, C))."""
    with torch.enable_grad(), capture(model, [layer]) as acts:
        logits = model(x.detach().clone().requires_grad_(True))
        h = acts[layer]
        if h.dim() != 4:
            raise ValueError(f"layer {layer!r} is not spatial (output {tuple(h.shape)}); "
                             f"pick a (C, H, W) layer, see `atlas layers {model.name} --spatial`")
        (g,) = torch.autograd.grad(logits[0, target], h)
    a = (h * g).sum(1)[0].detach().cpu().numpy()
    vecs = h[0].detach().flatten(1).T.cpu().numpy()
    return a, vecs


def explain_photo(model: AtlasModel, photo: str | os.PathLike, *, target: int | str | None = None,
                  layer: str = "inception4c", methods: Sequence[str] = DEFAULT_METHODS,
                  gradcam_layer: str | None = None, ig_steps: int = 32, smooth: bool = False,
                  smooth_samples: int = 16, seed: int = 0) -> Explanation:
    """Attribution maps of ``photo`` for ``target`` (index, class name or None = top-1).

    ``gradcam_layer`` defaults to ``layer``. With ``smooth``, saliency and guided backprop are
    averaged over ``smooth_samples`` noisy copies (SmoothGrad).
    """
    unknown = [m for m in methods if m not in attr.METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(attr.METHODS)}")
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
    maps: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    ig_err = None
    gen = torch.Generator().manual_seed(seed)
    for m in methods:
        t0 = time.perf_counter()
        if m == "integrated_gradients":
            ig = attr.integrated_gradients(model, x, t, steps=ig_steps)
            maps[m] = ig.map[0].abs().cpu().numpy()
            ig_err = float(ig.completeness_error[0])
        elif m == "grad_cam":
            maps[m] = attr.grad_cam(model, x, t, layer=gradcam_layer or layer)[0].cpu().numpy()
        elif smooth:
            maps[m] = attr.smoothgrad(attr.METHODS[m], model, x, t, samples=smooth_samples, generator=gen)[0].cpu().numpy()
        else:
            maps[m] = attr.METHODS[m](model, x, torch.tensor([t]))[0].cpu().numpy()
        seconds[m] = time.perf_counter() - t0
    la, vecs = layer_position_attribution(model, x, t, layer)
    return Explanation(str(photo), t, names[t], x[0].cpu(), probs, maps, layer, la, vecs, ig_err, seconds)


def explain_figure(e: Explanation, out: str | os.PathLike, class_names: Sequence[str] | None = None) -> Path:
    """Draw the photo, each map as a heatmap over it, the layer attribution grid and the top-5
    class probabilities into one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = class_names or [str(i) for i in range(len(e.probs))]
    img = e.image.permute(1, 2, 0).numpy()
    panels = ["photo", *e.maps, "layer"]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.1 * (len(panels) + 1), 3.6))
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
            title = name.replace("_", " ")
            if name == "integrated_gradients" and e.ig_completeness_error is not None:
                title += f"\ncompleteness err {100 * e.ig_completeness_error:.1f}%"
            ax.set_title(title, fontsize=9)
    ax = axes[-1]
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


@dataclass
class MethodScores:
    """Per method: mean deletion AUC (lower is better), mean insertion AUC (higher is better),
    mean seconds per photo, and the number of photos."""

    deletion_auc: dict[str, float]
    insertion_auc: dict[str, float]
    seconds: dict[str, float]
    photos: int
    ig_completeness_error: float | None = None

    def table(self) -> str:
        rows = ["| method | deletion AUC (lower is better) | insertion AUC (higher is better) | s / photo |",
                "|---|---|---|---|"]
        for m in self.deletion_auc:
            rows.append(f"| {m} | {self.deletion_auc[m]:.3f} | {self.insertion_auc[m]:.3f} | {self.seconds[m]:.2f} |")
        return "\n".join(rows)


def evaluate_methods(model: AtlasModel, photos: Sequence[str | os.PathLike], *,
                     methods: Sequence[str] = DEFAULT_METHODS, layer: str = "inception4e",
                     steps: int = 16, ig_steps: int = 32, progress: bool = True) -> MethodScores:
    """Deletion / insertion AUC of each method over ``photos`` for the model's top-1 class,
    with a random map as the floor to beat."""
    from tqdm.auto import tqdm

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
            elif m == "grad_cam":
                amap = attr.grad_cam(model, x, t, layer=layer)
            elif m == "integrated_gradients":
                ig = attr.integrated_gradients(model, x, t, steps=ig_steps)
                ig_errs.append(float(ig.completeness_error[0]))
                amap = ig.map.abs()
            else:
                amap = attr.METHODS[m](model, x, torch.tensor([t]))
            secs[m].append(time.perf_counter() - t0)
            c = attr.deletion_insertion(model, x, amap.to(x.device), torch.tensor([t]), steps=steps)
            dele[m].append(float(c.deletion_auc[0]))
            ins[m].append(float(c.insertion_auc[0]))
    mean = lambda d: {k: float(np.mean(v)) for k, v in d.items()}  # noqa: E731
    return MethodScores(mean(dele), mean(ins), mean(secs), len(photos),
                        float(np.mean(ig_errs)) if ig_errs else None)


def save_image(t: torch.Tensor, path: str | os.PathLike) -> None:
    """(3, H, W) in [0, 1] -> PNG."""
    arr = (t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
