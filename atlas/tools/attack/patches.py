"""Step 2 of the attack: patches. A neighbourhood's direction rendered as a feature
visualization (:func:`render_patches`), the photo crop around its strongest position
(:func:`example_patches`), its rendered icon (:func:`icon_patches`), or uniform noise, the
baseline (:func:`noise_patches`); every one ``(K, 3, px, px)`` in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from atlas.models import AtlasModel
from atlas.tools.attack.neighbourhoods import Candidate, ComparisonRows


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
    out = []
    for c in cands:
        if c.example_row < 0:
            raise ValueError(f"{c.name} has no example row")
        out.append(crop_around(views[int(rows.image[c.example_row])], rows.position[c.example_row], rows.grid,
                               px, fraction))
    return torch.stack(out)


def crop_around(view: torch.Tensor, position: Sequence[int], grid: tuple[int, int], px: int,
                fraction: float = 0.5) -> torch.Tensor:
    """The square crop of ``view`` ``(3, H, W)`` around the layer position ``(y, x)`` of a
    ``grid`` ``(gh, gw)`` (``fraction`` of the view's width, centred on the position and kept
    inside the view), resized to ``px``: ``(3, px, px)`` in [0, 1]."""
    gh, gw = grid
    _, h, w = view.shape
    y, x = position
    side = max(2, int(round(fraction * min(h, w))))
    cy, cx = (float(y) + 0.5) / gh * h, (float(x) + 0.5) / gw * w
    top = int(min(max(round(cy - side / 2), 0), h - side))
    left = int(min(max(round(cx - side / 2), 0), w - side))
    crop = view[:, top:top + side, left:left + side][None]
    return F.interpolate(crop.float(), size=(px, px), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp(0, 1)

def noise_patches(n: int, px: int, seed: int = 0) -> torch.Tensor:
    """``n`` uniform-noise patches ``(n, 3, px, px)``: the baseline every patch must beat."""
    return torch.rand(n, 3, px, px, generator=torch.Generator().manual_seed(seed))


def icon_patches(cands: Sequence[Candidate]) -> torch.Tensor:
    """The rendered icons of candidates as patches ``(K, 3, S, S)``; an error when one is missing."""
    missing = [c.name for c in cands if c.icon is None]
    if missing:
        raise ValueError(f"no rendered icon for {', '.join(missing)}; run `atlas render` or use patch=optvis")
    return torch.stack([torch.from_numpy(np.asarray(c.icon)).permute(2, 0, 1).float() / 255 for c in cands])
