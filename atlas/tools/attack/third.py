"""Third-class neighbourhoods: atlas cells that depict neither the source nor the target (nor
their close WordNet relatives) and that push the model's answer on source photos toward the
target. The Activation Atlas article's finding (a steam locomotive turns a snorkel into a
"scuba diver"): these are the model's shortcuts, where a patch of the target itself is not news.

How a cell is ranked: the gradient ``g`` of ``logit_target - logit_source`` with respect to the
layer's activations, averaged over every position of the source views, is the first-order
effect of adding a feature at a position of a source photo. A cell's push is ``g . d`` with
``d`` the cell's mean activation vector (``cells.h5``): how far putting the cell's feature into
a source photo moves the answer toward the target. Every cell of the grid is ranked this way,
not only the cells that the source and target photos' own positions fall in; the cells whose
top classes (by the atlas's attribution) include the source, the target or one of their close
relatives are left out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.models.hooks import layer_as_leaf
from atlas.resources import imagenet_wnids
from atlas.resources.wordnet import DEFAULT_MAX_GROUP, DEFAULT_MAX_HOPS, close_relatives
from atlas.store.runs import run_file
from atlas.tools.attack.neighbourhoods import Candidate, cell_class_ids
from atlas.tools.attack.patches import crop_around


def push_gradient(model: AtlasModel, layer: str, images: torch.Tensor, source: int, target: int, *,
                  batch_size: int = 16) -> np.ndarray:
    """``d (logit_target - logit_source) / d h`` at ``layer``, averaged over the images and every
    position: ``(C,)`` float64."""
    total, n = None, 0
    for start in range(0, len(images), batch_size):
        with layer_as_leaf(model.layer(layer)) as captured, torch.enable_grad():
            logits = model(images[start:start + batch_size].to(model.device))
            (logits[:, target] - logits[:, source]).sum().backward()
        g = captured["h"].grad
        if g is None or g.dim() != 4:
            raise ValueError(f"layer {layer!r} gives no spatial gradient (output {tuple(captured['h'].shape)})")
        s = g.double().sum((0, 2, 3)).cpu()
        total = s if total is None else total + s
        n += g.shape[0] * g.shape[2] * g.shape[3]
    if total is None:
        raise ValueError("no images to take the gradient on")
    return (total / n).numpy()


def excluded_classes(source: int, target: int, n_classes: int, *, max_hops: int = DEFAULT_MAX_HOPS,
                     max_group: int | None = DEFAULT_MAX_GROUP, wnids: Sequence[str] | None = None) -> set[int]:
    """The source, the target and their close WordNet relatives (ImageNet-1k class indices; for a
    model with other classes, only the source and the target)."""
    out = {int(source), int(target)}
    w = list(wnids) if wnids is not None else (imagenet_wnids() if n_classes == 1000 else None)
    if w is not None:
        for c in (source, target):
            out.update(close_relatives(w[c], w, max_hops, max_group))
    return out


def third_class_cells(cells, grad: np.ndarray | None, exclude: set[int], *, k: int = 10, top: int = 3,
                      min_count: int = 8, class_names: Sequence[str], push: np.ndarray | None = None
                      ) -> list[Candidate]:
    """The ``k`` cells of one grid level (a :class:`~atlas.store.cells.CellLevel`) with the largest
    push ``grad . direction`` (or the given ``push``, one value per cell of ``cells``) whose first
    ``top`` classes hold none of ``exclude`` and that hold at least ``min_count`` rows. ``score``
    is the push; the candidates carry the cell's direction and top classes, and ``example_row``
    is the atlas row nearest the direction (``cells.h5``)."""
    if push is None:
        if grad is None:
            raise ValueError("give the gradient or the push of every cell")
        push = cells.direction.astype(np.float64) @ grad
    push = np.asarray(push, np.float64)
    if push.shape != (len(cells.cell_id),):
        raise ValueError(f"push has shape {push.shape}, not one value per cell ({len(cells.cell_id)})")
    size = int(cells.size)
    out = []
    for i in np.argsort(-push, kind="stable"):
        if push[i] <= 0 or len(out) >= k:
            break
        mine = cell_class_ids(cells, i, len(class_names))[:top]
        if int(cells.count[i]) < min_count or not mine or set(mine) & exclude:
            continue
        cid = int(cells.cell_id[i])
        ex = cells.example_rows[i]
        out.append(Candidate(size, cid // size, cid % size, float(push[i]), float(push[i]), 0.0, int(cells.count[i]),
                             [class_names[c] for c in mine],
                             cells.direction[i].astype(np.float32), None,
                             example_row=int(ex[0]) if len(ex) and ex[0] >= 0 else -1))
    return out


def atlas_has_attribution(run_dir: str | os.PathLike, layer: str) -> bool:
    """Whether the run's atlas rows of ``layer`` carry their attribution to the classes (``atlas
    collect`` with attribution on), which :func:`atlas_class_attribution` reads."""
    from atlas.store.activations import ActivationsFile

    with ActivationsFile(run_file(Path(run_dir), "activations.h5")) as acts:
        return bool(acts.has(layer, "attribution/top_classes"))


def atlas_class_attribution(run_dir: str | os.PathLike, level: int, classes: Sequence[int]
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The class-comparison atlas over every photo of the atlas, as the article reads it: for each
    cell of grid ``level`` (by cell id), the mean over its atlas rows of each class's attribution
    ``h . d logit_c / d h`` at the row's position of its own photo, ``(level * level,
    len(classes))``, and the rows per cell. A row that does not list the class among its stored
    top classes counts 0 (collect keeps each row's ``top_k`` classes), so the means understate
    weak attributions; a cell full of, say, locomotive smoke that the model reads as "scuba
    diver" stands out."""
    from atlas.stages.grid import grid_cells
    from atlas.store.activations import ActivationsFile
    from atlas.store.layout import read_layout

    run_dir = Path(run_dir)
    layout = read_layout(run_dir / "layout.h5")
    rows = np.flatnonzero(layout.valid)
    if not atlas_has_attribution(run_dir, layout.layer):
        raise ValueError(f"{run_dir / 'activations.h5'} holds no attribution; collect with attribution on, "
                         "or rank the cells by their push (rank='push')")
    with ActivationsFile(run_file(run_dir, "activations.h5")) as acts:
        layer = acts.layer(layout.layer)
        tc = acts.read_rows(layer, "attribution/top_classes", layout.row_ids[rows])
        tv = acts.read_rows(layer, "attribution/top_values", layout.row_ids[rows]).astype(np.float64)
    ids = grid_cells(layout.xy[rows], level)
    counts = np.bincount(ids, minlength=level * level)
    out = np.zeros((level * level, len(classes)))
    for j, c in enumerate(classes):
        out[:, j] = np.bincount(ids, weights=np.where(tc == c, tv, 0.0).sum(1), minlength=level * level)
    return out / np.maximum(counts, 1)[:, None], counts


def atlas_example_patches(run_dir: str | os.PathLike, cands: Sequence[Candidate], model: AtlasModel, px: int,
                          fraction: float = 0.5) -> tuple[torch.Tensor, list[str]]:
    """Dataset-example patches of atlas cells: for each candidate, the crop of the atlas photo
    around its example row's position (``fraction`` of the width, as the model sees the photo),
    resized to ``px``. Returns the patches and the photo keys; a candidate whose photo cannot be
    read gets a grey patch and an empty key."""
    from atlas.data import BadImage, decode_image
    from atlas.store.activations import ActivationsFile

    run_dir = Path(run_dir)
    with ActivationsFile(run_file(run_dir, "activations.h5")) as acts:
        root = Path(str(acts.attrs.get("source", "")))
        keys = acts.image_keys()
        layer = acts.layer()
        grid = acts.spec(layer).grid_shape
        info = {}
        for c in cands:
            if c.example_row >= 0:
                img = int(acts.read(layer, "image_index", c.example_row, c.example_row + 1)[0])
                pos = acts.read(layer, "position", c.example_row, c.example_row + 1)[0]
                info[c.example_row] = (keys[img], pos)
    out, names = [], []
    for c in cands:
        key, pos = info.get(c.example_row, ("", None))
        patch = torch.full((3, px, px), 0.5)
        if key and "::" not in key:
            try:
                view = model.image_transform(decode_image((root / key).read_bytes()))
                patch = crop_around(view, pos, grid, px, fraction)
            except (BadImage, OSError):
                key = ""
        out.append(patch)
        names.append(key)
    return torch.stack(out), names
