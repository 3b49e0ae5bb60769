"""The picture of an explanation (:func:`explain_figure`): the photo, each map over it, the layer
attribution grid, the class probabilities and, with a placement, the photo's positions over the
atlas picture (:func:`atlas_background`, also the adversarial figures')."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from atlas.tools.explain.maps import Explanation
from atlas.tools.explain.placement import AtlasPlacement


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


def save_image(t: torch.Tensor, path: str | os.PathLike) -> None:
    """(3, H, W) in [0, 1] -> PNG."""
    arr = (t.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)
