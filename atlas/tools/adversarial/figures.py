"""The figure of one attacked photo (:func:`adversarial_figure`): the photo, the amplified
perturbation and the adversarial image with their top classes and, given an atlas run, where
both photos' activations land on the atlas (:func:`place_pair`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from atlas.models import AtlasModel
from atlas.tools.adversarial.attacks import describe_eps
from atlas.tools.adversarial.photos import AdversarialPhoto


def place_pair(model: AtlasModel, photo: AdversarialPhoto, run_dir: str | os.PathLike, est=None,
               class_names: Sequence[str] | None = None):
    """Where the clean and the adversarial image's activations land on the atlas in ``run_dir``:
    two :class:`~atlas.tools.explain.AtlasPlacement`, attribution toward the adversarial image's top-1
    class (the target when it succeeded). ``est``: the layout's fitted placer, to load it once
    for many photos (default: loaded here)."""
    from atlas.stages.reduce import load_placer
    from atlas.store.layout import read_layout
    from atlas.tools.explain import Explanation, layer_position_attribution, place_on_atlas

    run_dir = Path(run_dir)
    layout = run_dir / "layout.h5"
    if not layout.is_file():
        raise ValueError(f"{run_dir} holds no layout.h5; give the folder of an atlas run (after `atlas reduce`)")
    layer = str(read_layout(layout).attrs.get("layer"))
    est = est if est is not None else load_placer(layout)
    names = class_names or model.class_names or [str(i) for i in range(len(photo.probs))]
    k = int(np.argmax(photo.adv_probs))
    out = []
    for img, probs in ((photo.image, photo.probs), (photo.adversarial, photo.adv_probs)):
        x = img[None].to(model.device)
        a, vecs = layer_position_attribution(model, x, k, layer)
        e = Explanation(photo.path, k, names[k], img, probs, {}, layer, a, vecs)
        out.append(place_on_atlas(e, run_dir, class_names=names, est=est))
    return out[0], out[1]


def _top_text(probs: np.ndarray, names: Sequence[str], n: int = 3, mark: int | None = None) -> str:
    top = np.argsort(probs)[::-1][:n]
    return "\n".join(f"{'> ' if c == mark else ''}{names[int(c)][:22]} {100 * probs[c]:.1f}%" for c in top)


def adversarial_figure(photo: AdversarialPhoto, out: str | os.PathLike, class_names: Sequence[str],
                       norm: str, placements=None) -> Path:
    """One PNG: the photo, the perturbation (amplified to the full range, grey = no change), the
    adversarial image, each with its top-3 classes, and, with ``placements`` (clean, adversarial)
    from :func:`place_pair`, both photos' positions over the atlas picture."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(class_names)
    delta = (photo.adversarial - photo.image).permute(1, 2, 0).numpy()
    amp = float(np.abs(delta).max()) or 1.0
    label, goal = photo.label, photo.target
    if placements is None:
        fig, axes = plt.subplots(1, 3, figsize=(9.6, 4.4))
    else:
        fig = plt.figure(figsize=(9.6, 4.4 + 6.6))
        grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.9])
        axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
        _atlas_pair_panel(fig.add_subplot(grid[1, :]), placements, names[int(np.argmax(photo.adv_probs))])
    ok = photo.smallest_eps is not None
    panels = [(photo.image.permute(1, 2, 0).numpy(), f"photo: {Path(photo.path).name[:30]}",
               _top_text(photo.probs, names, mark=label)),
              (np.clip(0.5 + delta / (2 * amp), 0, 1),
               f"perturbation x{0.5 / amp:.0f}\n{describe_eps(photo.shown_eps, norm)} budget", ""),
              (photo.adversarial.permute(1, 2, 0).numpy(),
               ("flipped" if ok else "not flipped") + (f" to {names[goal][:22]!r}" if goal is not None else ""),
               _top_text(photo.adv_probs, names, mark=goal))]
    for ax, (img, title, text) in zip(axes, panels):
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(text, fontsize=8, loc="left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_small_png(fig, out)
    plt.close(fig)
    return out


def _save_small_png(fig, out: Path, dpi: int = 90) -> None:
    """Save a figure as a 256-color PNG (a third of the size of a true-color one, photos included)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def _atlas_pair_panel(ax, placements, class_name: str) -> None:
    """The atlas picture with the clean photo's positions (blue rings) and the same positions of
    the adversarial image (red dots), a line for each position's move."""
    from atlas.tools.explain import atlas_background

    clean, adv = placements
    to_px = atlas_background(ax, clean.run_dir)
    ok = np.isfinite(clean.xy).all(1) & np.isfinite(adv.xy).all(1)
    a, b = to_px(clean.xy[ok]), to_px(adv.xy[ok])
    for (x0, y0), (x1, y1) in zip(a, b):  # each position's move
        ax.plot([x0, x1], [y0, y1], color="black", lw=0.4, alpha=0.5)
    ax.scatter(a[:, 0], a[:, 1], s=22, facecolors="none", edgecolors="#1f77b4", linewidths=1.0,
               label=f"photo: {len(a)} positions")
    ax.scatter(b[:, 0], b[:, 1], s=10, c="#d62728", edgecolors="white", linewidths=0.3,
               label="adversarial: the same positions")
    shift = float(np.median(np.linalg.norm(adv.xy[ok] - clean.xy[ok], axis=1))) if ok.any() else float("nan")
    top = [", ".join(nb["classes"][:2]) for nb in adv.neighborhoods[:2] if nb["classes"]]
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_title(f"{clean.layer} activations on the atlas ({clean.run_dir.name}); lines: each position's move, "
                 f"median {shift:.3f} of the atlas width"
                 + (f"\nadversarial neighbourhoods pushing most toward {class_name!r}: " + "; ".join(top)
                    if top else ""), fontsize=9)
