"""Rows of the collect stage: what one batch of images contributes to ``activations.h5``.

Shared by the in-process collect (:mod:`atlas.stages.collect.stage`) and its Dask tasks
(:mod:`atlas.runtime.distributed`), which both import from here and not from each other.

Every row is the C-dimensional activation vector ``h`` of one layer at one spatial position of
one image, with its attribution to the class logits (Carter et al., "Activation Atlas", 2019):

    attribution_c = h . d logit_c / d h      (at that position only).

Two ways to compute it, chosen by :attr:`CollectSettings.attribution_classes`:

- ``0`` (every class, exact): a Jacobian-vector product, the derivative of all K logits in the
  direction of ``h`` masked to the position, by forward-mode AD. One pass of the network per
  sampled position, whatever K; the cheap choice for the paper's one or few positions per image.
- ``N > 0`` (candidate classes): one backward pass from each of the image's N top-scoring
  classes (plus its label, when known) to the layer gives ``d logit_c / d h`` at *every*
  position at once, so the attribution of all positions costs one forward pass and N backward
  passes through the layers above, batched with ``torch.autograd.grad(is_grads_batched=True)``.
  The values are the exact ones of the forward-mode pass for those classes (tested); classes
  outside the candidates are not considered for the row's top-k. This is the choice for
  ``sampling="all"``, where forward mode would need one pass per position (196 at
  ``inception4c``).

Token layers of vision transformers, (B, T, C), are read as their patch tokens on the patch grid
(B, C, H, W) (:mod:`atlas.models.tokens`): a position is a patch token, the class token (and any
register token) is none, and the attribution at a position is that of the patch token's vector,
computed on the token tensor itself.

Rows of a batch are buffered per block of images and committed atomically (:func:`buffer_batch`,
:func:`commit_block`), so a killed run redoes at most one block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from atlas.checks import SettingError, at_least, one_of
from atlas.models import capture
from atlas.models.hooks import layer_as_leaf, layers_from_leaf
from atlas.models.tokens import grid_view
from atlas.runtime import forward_ad

if TYPE_CHECKING:
    from atlas.models import AtlasModel
    from atlas.store.activations import LayerSpec, PartStore

Sampling = Literal["random", "all", "shared"]
Rows = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class CollectSettings:
    """Everything that decides which rows ``activations.h5`` holds (hashed into the file).

    Attributes:
        layers: layer names of the model, e.g. ``("inception4c",)``.
        sampling: ``"random"`` (``positions_per_image`` distinct positions per image, at least
            ``edge_margin`` cells from the border; the paper's default is one), ``"all"``
            (every position of the grid, margin ignored) or ``"shared"`` (for several layers of
            different grids: ``positions_per_image`` positions drawn as ``"random"`` draws them
            on the coarsest layer's grid, and each layer's row is the cell of its own grid that
            holds the centre of that coarse cell, so row i of every layer looks at the same part
            of the same photo; see :func:`shared_positions`).
        shared_grid: with ``"shared"`` sampling, the (H, W) grid the places are drawn on; empty
            (the default): the coarsest of ``layers``. Set it to collect some layers of a run
            at the run's places, e.g. one layer of another model for an aligned atlas of a
            multi-layer run (whose places were drawn on its coarsest layer).
        positions_per_image: k for random sampling.
        edge_margin: border cells excluded from random sampling (padding artifacts live there).
        seed: positions of image i come from ``np.random.default_rng([seed, i])``, so they do
            not depend on batching, workers or resumption.
        attribution: compute class attribution.
        attribution_classes: ``0``: rank every class (exact; one forward-mode pass per sampled
            position). ``N > 0``: rank the image's N top-scoring classes plus its label (one
            backward pass per class for all positions at once; see the module docstring).
        top_k: classes kept per row, by attribution.
        full_attribution: also store the full (N, K) attribution as float16 (needs
            ``attribution_classes=0``).
        dtype: storage dtype of activations, ``"float16"`` or ``"float32"``.
        block_size: images per committed part; a kill loses at most one block of work.
    """

    layers: tuple[str, ...] = ("inception4c",)
    sampling: Sampling = "random"
    positions_per_image: int = 1
    edge_margin: int = 1
    seed: int = 0
    attribution: bool = True
    attribution_classes: int = 0
    top_k: int = 10
    full_attribution: bool = False
    dtype: Literal["float16", "float32"] = "float16"
    block_size: int = 256
    shared_grid: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.layers or not all(isinstance(n, str) and n for n in self.layers):
            raise SettingError("layers", f"must name at least one layer (e.g. inception4c), got {self.layers!r}")
        one_of("sampling", self.sampling, ("random", "all", "shared"))
        at_least("positions_per_image", self.positions_per_image, 1)
        at_least("edge_margin", self.edge_margin, 0)
        at_least("top_k", self.top_k, 1)
        at_least("attribution_classes", self.attribution_classes, 0,
                 " (0 ranks every class, N the N top-scoring ones)")
        if self.attribution_classes and self.full_attribution:
            raise ValueError("full_attribution stores every class, so it needs attribution_classes = 0 "
                             "(drop --attribution-classes or --full-attribution)")
        one_of("dtype", self.dtype, ("float16", "float32"))
        at_least("block_size", self.block_size, 1)
        grid = tuple(self.shared_grid)
        if grid and (len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid)):
            raise SettingError("shared_grid", f"must be a grid (H, W) of positive sizes, e.g. [7, 7], or empty, got "
                                              f"{self.shared_grid!r}")
        object.__setattr__(self, "shared_grid", grid)

    def kept_classes(self, n_classes: int) -> int:
        """Columns of ``attribution/top_classes``: top_k, capped by the classes ranked."""
        ranked = n_classes if not self.attribution_classes else min(n_classes, self.attribution_classes + 1)
        return min(self.top_k, ranked)


def sample_positions(
    image_index: int,
    grid_shape: tuple[int, int],
    settings: CollectSettings,
) -> np.ndarray:
    """Positions (k, 2) as (y, x) for one image; deterministic in (seed, image_index).

    Random sampling draws ``positions_per_image`` distinct cells of the interior
    ``[margin, H - margin) x [margin, W - margin)``; if the grid is too small for the margin,
    the whole grid is used. ``"all"`` returns every cell in row-major order.
    """
    h, w = grid_shape
    if settings.sampling == "all":
        ys, xs = np.divmod(np.arange(h * w), w)
        return np.stack([ys, xs], 1)
    m = settings.edge_margin
    if h - 2 * m < 1 or w - 2 * m < 1:
        m = 0
    ih, iw = h - 2 * m, w - 2 * m
    k = min(settings.positions_per_image, ih * iw)
    rng = np.random.default_rng([settings.seed, image_index])
    flat = rng.choice(ih * iw, size=k, replace=False)
    ys, xs = np.divmod(flat, iw)
    return np.stack([ys + m, xs + m], 1)


def shared_positions(
    image_index: int,
    grid_shapes: Sequence[tuple[int, int]],
    settings: CollectSettings,
) -> list[np.ndarray]:
    """Positions (k, 2) of one image in each of ``grid_shapes``, the same k places of the photo.

    The places are drawn on the coarsest grid (fewest cells; or ``settings.shared_grid``) as ``"random"`` sampling draws them
    (``positions_per_image``, ``edge_margin`` in that grid's cells, seeded by ``(seed,
    image_index)``); in a finer H x W grid a coarse cell (y, x) of an h x w grid becomes the cell
    holding its centre, ``(floor((y + 0.5) H / h), floor((x + 0.5) W / w))``. Layers of one
    grid get identical positions, so their rows line up one to one.
    """
    coarse = tuple(settings.shared_grid) or min(grid_shapes, key=lambda g: (g[0] * g[1], g))
    base = sample_positions(image_index, coarse, replace(settings, sampling="random"))
    out = []
    for h, w in grid_shapes:
        ys = np.floor((base[:, 0] + 0.5) * h / coarse[0]).astype(base.dtype)
        xs = np.floor((base[:, 1] + 0.5) * w / coarse[1]).astype(base.dtype)
        out.append(np.stack([np.minimum(ys, h - 1), np.minimum(xs, w - 1)], 1))
    return out


def batch_positions(image_indices: Sequence[int], specs: Sequence[LayerSpec],
                    settings: CollectSettings) -> dict[str, np.ndarray]:
    """Positions (B, k, 2) of every layer for a batch of images (:func:`sample_positions`, or
    :func:`shared_positions` with ``sampling = "shared"``)."""
    if settings.sampling == "shared":
        grids = [s.grid_shape for s in specs]
        per_image = [shared_positions(int(i), grids, settings) for i in image_indices]
        return {s.name: np.stack([p[j] for p in per_image]) for j, s in enumerate(specs)}
    return {s.name: np.stack([sample_positions(int(i), s.grid_shape, settings) for i in image_indices])
            for s in specs}


def capture_until_last(model: AtlasModel, images: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Outputs of ``layers`` for ``images``, stopping the forward pass after the last of them
    (token layers as their patch grid, (B, C, H, W))."""
    with torch.no_grad(), capture(model, layers, stop=True, grid=True) as captured:
        model(images)
    return captured


def _no_logits_error(layer: str) -> ValueError:
    return ValueError(f"layer {layer!r} does not feed the logits, so it has no class attribution; "
                      f"use --no-attribution")


def attributed_slots(
    model: AtlasModel, images: torch.Tensor, layer: str, pos: np.ndarray
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per slot: the activations (B, C) at that position and the attribution to all logits (B, K).

    One forward pass per slot; the layer's output is made a dual tensor whose tangent is the
    activation itself masked to the slot's position, so the logits' tangent is
    ``sum_c' h_c' * d logit / d h_c'`` at that position: the attribution of every class at once.
    On a token layer the position is a patch token: the tangent is that token's vector.
    """
    b = images.shape[0]
    batch_idx = torch.arange(b, device=images.device)
    acts, attrs = [], []
    module = model.layer(layer)
    for slot in range(pos.shape[1]):
        captured: dict[str, torch.Tensor] = {}
        ys = torch.as_tensor(pos[:, slot, 0], device=images.device)
        xs = torch.as_tensor(pos[:, slot, 1], device=images.device)

        def hook(_m, _i, output):
            h = fwAD.unpack_dual(output).primal
            tangent = torch.zeros_like(h)
            captured["h"] = grid_view(h, model.token_grid)[batch_idx, :, ys, xs]
            grid_view(tangent, model.token_grid)[batch_idx, :, ys, xs] = captured["h"]  # a view of the tokens
            return fwAD.make_dual(h, tangent)

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad(), forward_ad.dual_level():
                tangent = fwAD.unpack_dual(model(images)).tangent
        finally:
            handle.remove()
        if tangent is None:  # the layer does not reach the logits
            raise _no_logits_error(layer)
        acts.append(captured["h"])
        attrs.append(tangent)
    return acts, attrs


def candidate_classes(logits: torch.Tensor, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n + 1) class ids per image: its ``n`` top-scoring classes, then its label.

    When the label is unknown (-1) or already among the top ``n``, the last column is the
    ``n + 1``-th scoring class instead, so every image ranks the same number of distinct classes.
    """
    k = logits.shape[1]
    if n + 1 >= k:
        return torch.arange(k, device=logits.device).expand(logits.shape[0], k)
    top = logits.topk(n + 1, dim=1).indices
    if labels is None:
        return top
    labels = labels.to(logits.device)
    known = (labels >= 0) & (labels < k)
    in_top = (top[:, :n] == labels[:, None]).any(1)
    out = top.clone()
    use = known & ~in_top
    out[use, n] = labels[use]
    return out


def position_attribution(
    model: AtlasModel,
    images: torch.Tensor,
    layer: str,
    classes: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attribution ``h . d logit_c / d h`` of every position of ``layer`` to a few classes per image.

    One forward pass, then one backward pass per class column (batched with
    ``is_grads_batched``), from the logits down to the layer only: the layer's output is made a
    leaf, so nothing below it is differentiated.

    Args:
        classes: ``(B, m)`` class ids per image, or a function of the logits ``(B, K)`` that
            returns them (e.g. each image's top-scoring classes).

    Returns:
        ``h`` (B, C, H, W): the layer's activations (a token layer's patch tokens on their grid);
        ``classes`` (B, m): the classes;
        ``attr`` (B, m, H, W): ``h . d logit_c / d h`` at every position for each class.
    """
    with layer_as_leaf(model.layer(layer)) as captured, torch.enable_grad():
        logits = model(images)
    h = captured["h"]  # the leaf: tokens (B, T, C) on a token layer
    layout = model.token_layout(h.shape[1:]) if h.dim() == 3 else None
    if h.dim() != 4 and layout is None:
        raise ValueError(f"layer {layer!r} is not spatial (output {tuple(h.shape)})")
    if not logits.requires_grad:
        raise _no_logits_error(layer)
    classes = classes(logits.detach()) if callable(classes) else torch.as_tensor(classes, device=logits.device)
    m = classes.shape[1]
    onehot = torch.zeros((m, *logits.shape), dtype=logits.dtype, device=logits.device)
    onehot.scatter_(2, classes.T[:, :, None], 1.0)
    (grads,) = torch.autograd.grad(logits, h, grad_outputs=onehot, is_grads_batched=True)
    h = h.detach()
    if layout is not None:  # the patch tokens on their grid, gradients alike: (m, B, T, C) -> (m, B, C, H, W)
        h, grads = layout.to_grid(h), layout.to_grid(grads)
    attr = (grads * h).sum(2)  # (m, B, H, W)
    return h, classes, attr.transpose(0, 1)


def layer_attributions(
    model: AtlasModel,
    images: torch.Tensor,
    layers: Sequence[str],
    classes: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """:func:`position_attribution` of several layers from one forward and one batched backward
    pass: the lowest layer's output is the leaf and the others stay in the graph above it
    (:func:`~atlas.models.hooks.layers_from_leaf`), so the backward pass that reaches the lowest
    layer gives every layer's gradient on the way. The same values as one
    :func:`position_attribution` per layer, for the cost of the deepest one. A layer that is not
    above the lowest one in the graph (a parallel branch) gets its own pass.

    Returns ``{layer: (h, classes, attr)}`` as :func:`position_attribution` returns them.
    """
    if len(layers) == 1:
        return {layers[0]: position_attribution(model, images, layers[0], classes)}
    with layers_from_leaf([(name, model.layer(name)) for name in layers]) as captured, torch.enable_grad():
        logits = model(images)
    if not logits.requires_grad:
        raise _no_logits_error(layers[0])
    chosen = classes(logits.detach())
    linked = [name for name in layers if name in captured and captured[name].requires_grad]
    m = chosen.shape[1]
    onehot = torch.zeros((m, *logits.shape), dtype=logits.dtype, device=logits.device)
    onehot.scatter_(2, chosen.T[:, :, None], 1.0)
    grads = torch.autograd.grad(logits, [captured[name] for name in linked], grad_outputs=onehot,
                                is_grads_batched=True)
    out = {}
    for name, grad in zip(linked, grads):
        h = captured[name].detach()
        layout = model.token_layout(h.shape[1:]) if h.dim() == 3 else None
        if h.dim() != 4 and layout is None:
            raise ValueError(f"layer {name!r} is not spatial (output {tuple(h.shape)})")
        if layout is not None:
            h, grad = layout.to_grid(h), layout.to_grid(grad)
        out[name] = (h, chosen, (grad * h).sum(2).transpose(0, 1))
    del grads, captured
    for name in layers:
        if name not in out:
            out[name] = position_attribution(model, images, name, chosen)
    return out


def candidate_attribution(
    model: AtlasModel, images: torch.Tensor, layer: str, n: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`position_attribution` to each image's candidate classes (:func:`candidate_classes`):
    its ``n`` top-scoring classes plus its label; ``classes`` is ``(B, n + 1)``."""
    return position_attribution(model, images, layer, lambda logits: candidate_classes(logits, n, labels))


def compute_rows(
    model: AtlasModel,
    images: torch.Tensor,
    image_indices: Sequence[int],
    specs: Sequence[LayerSpec],
    settings: CollectSettings,
    labels: Sequence[int] | None = None,
) -> Rows:
    """Rows of one batch of images: activations, positions and attribution per layer.

    Args:
        images: (B, 3, S, S) RGB in [0, 1] on the model's device.
        image_indices: (B,) source indices of the images (they seed the positions).
        labels: (B,) class labels (-1 unknown); with ``attribution_classes`` the label is
            always among the ranked classes.
    Returns:
        ``{layer: {"activations": (R, C), "image_index": (R,), "position": (R, 2),
        "attribution/top_classes": (R, k), "attribution/top_values": (R, k)
        [, "attribution/full": (R, K)]}}`` with rows ordered by image, then position.
    """
    b = images.shape[0]
    out: Rows = {}
    act_dtype = np.float16 if settings.dtype == "float16" else np.float32
    positions = batch_positions(image_indices, specs, settings)  # layer -> (B, k, 2)
    batch_idx = torch.arange(b, device=images.device)
    label_t = None if labels is None else torch.as_tensor(np.asarray(labels, np.int64), device=images.device)

    def gather(h: torch.Tensor, pos: np.ndarray, slot: int) -> torch.Tensor:
        ys = torch.as_tensor(pos[:, slot, 0], device=h.device)
        xs = torch.as_tensor(pos[:, slot, 1], device=h.device)
        return h[batch_idx, ..., ys, xs]  # (B, C) or (B, n)

    if not settings.attribution:
        acts_by_layer = capture_until_last(model, images, [s.name for s in specs])
    elif settings.attribution_classes:  # every layer from one forward and one backward pass
        n = settings.attribution_classes
        by_layer = layer_attributions(model, images, [s.name for s in specs],
                                      lambda logits: candidate_classes(logits, n, label_t))
    for spec in specs:
        pos = positions[spec.name]
        n_slots = pos.shape[1]
        cand = None
        if settings.attribution and settings.attribution_classes:
            h, classes, attr_map = by_layer.pop(spec.name)
            acts = [gather(h, pos, slot) for slot in range(n_slots)]
            attrs = [gather(attr_map, pos, slot) for slot in range(n_slots)]  # each (B, n + 1)
            cand = classes.repeat_interleave(n_slots, 0)  # rows ordered by image then slot
        elif settings.attribution:
            acts, attrs = attributed_slots(model, images, spec.name, pos)
        else:
            acts = [gather(acts_by_layer[spec.name], pos, slot) for slot in range(n_slots)]
        # (B, slots, C) -> rows ordered by image then slot
        a = torch.stack(acts, 1).reshape(b * n_slots, -1)
        fields = {
            "activations": a.float().cpu().numpy().astype(act_dtype),
            "image_index": np.repeat(np.asarray(image_indices, np.int64), n_slots),
            "position": pos.reshape(b * n_slots, 2).astype(np.int16),
        }
        if settings.attribution:
            full = torch.stack(attrs, 1).reshape(b * n_slots, -1).float()
            k = min(settings.top_k, full.shape[1])
            vals, cls = full.topk(k, dim=1)
            if cand is not None:
                cls = cand.gather(1, cls)
            fields["attribution/top_classes"] = cls.cpu().numpy().astype(np.int16)
            fields["attribution/top_values"] = vals.cpu().numpy().astype(np.float32)
            if settings.full_attribution:
                fields["attribution/full"] = full.cpu().numpy().astype(np.float16)
        out[spec.name] = fields
    return out


def empty_rows(specs: Sequence[LayerSpec], settings: CollectSettings, n_classes: int) -> Rows:
    """Zero rows of every field, with the dtypes and widths of :func:`compute_rows`."""
    act_dtype = np.float16 if settings.dtype == "float16" else np.float32
    out = {}
    for s in specs:
        f = {
            "activations": np.zeros((0, s.channels), act_dtype),
            "image_index": np.zeros(0, np.int64),
            "position": np.zeros((0, 2), np.int16),
        }
        if settings.attribution:
            k = settings.kept_classes(n_classes)
            f["attribution/top_classes"] = np.zeros((0, k), np.int16)
            f["attribution/top_values"] = np.zeros((0, k), np.float32)
            if settings.full_attribution:
                f["attribution/full"] = np.zeros((0, n_classes), np.float16)
        out[s.name] = f
    return out


def buffer_batch(buffers: dict[int, dict], rows: Rows | None, status: Mapping[int, int], block_size: int) -> None:
    """Split a batch's rows and statuses by the block their image belongs to."""
    for i, code in status.items():
        buf = buffers.setdefault(i // block_size, {"status": {}, "rows": []})
        buf["status"][i] = code
    if rows is None:
        return
    first = next(iter(rows.values()))
    blocks = first["image_index"] // block_size
    for blk in np.unique(blocks):
        # every layer has rows for the same images, so each layer's mask is computed on its own
        buffers[int(blk)]["rows"].append(
            {layer: {k: v[f["image_index"] // block_size == blk] for k, v in f.items()} for layer, f in rows.items()}
        )


def commit_block(parts: PartStore, blk: int, buf: dict, specs: Sequence[LayerSpec], settings: CollectSettings,
                 n_classes: int) -> None:
    """Write one finished block's rows and image statuses as its part file (atomically)."""
    start = blk * settings.block_size
    codes = np.array([buf["status"][i] for i in sorted(buf["status"])], np.uint8)
    merged = empty_rows(specs, settings, n_classes)
    if buf["rows"]:
        merged = {
            layer: {k: np.concatenate([r[layer][k] for r in buf["rows"]]) for k in merged[layer]}
            for layer in merged
        }
    parts.write(blk, start, codes, merged)


__all__ = ["CollectSettings", "Sampling", "attributed_slots", "buffer_batch", "candidate_attribution",
           "candidate_classes", "capture_until_last", "commit_block", "compute_rows", "empty_rows",
           "position_attribution", "sample_positions",
           "shared_positions", "batch_positions", "layer_attributions"]
