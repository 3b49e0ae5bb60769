"""Attribution maps over the input pixels, and their deletion / insertion evaluation.

Every method takes an :class:`~atlas.models.AtlasModel` (RGB [0, 1] in, logits out), an image
batch ``x`` (N, 3, H, W) and target classes (N,), and returns a map (N, H, W) (channels reduced as
each paper does) -- except :func:`integrated_gradients`, which also returns its completeness
error. Gradients are taken with respect to the [0, 1] RGB input, so maps of every model compare.

- :func:`saliency`: Simonyan, Vedaldi, Zisserman 2014, |d logit / d x| max over channels.
- :func:`guided_backprop`: Springenberg et al. 2015: ReLUs pass only positive gradients where
  the input was positive; done with backward hooks on ``nn.ReLU`` modules and by swapping
  ``F.relu`` in modules that call it functionally (both undone afterwards).
- :func:`deconvnet`: Zeiler & Fergus 2014: ReLUs pass only positive gradients whatever the
  forward input was (the backward mask of guided backprop without the forward one).
- :func:`grad_cam`: Selvaraju et al. 2017: ReLU(sum_c alpha_c A_c) with alpha_c the spatial mean
  of d logit / d A_c, upsampled bilinearly to the input. Defined on the last convolutional
  layer, which is the default here (:func:`last_spatial_layer`: ``inception5b`` for InceptionV1).
- :func:`grad_cam_pp`: Chattopadhay et al. 2018 (Grad-CAM++): per-position weights in closed form
  from the exp(score) trick, so one small instance of the class counts as much as a large one.
- :func:`cam`: Zhou et al. 2016 (CAM): for a network that ends in global average pooling and a
  linear layer, ``CAM_k = sum_c W[k, c] A_c`` at the pooled layer, found by
  :func:`find_gap_linear_head`; its spatial mean plus the bias is the logit, exactly.
- :func:`occlusion`: Zeiler & Fergus 2014: slide a grey patch over the image and record the
  drop of the target logit, averaged over the patches covering each pixel.
- :func:`igos`: Qi, Khorram, Li 2020 (I-GOS): a smooth low-resolution mask optimized for
  deletion and insertion with integrated-gradient descent directions, L1 and total-variation
  penalties and a backtracking (Armijo) line search.
- :func:`integrated_gradients`: Sundararajan, Taly, Yan 2017, Riemann sum (midpoint rule) from a
  baseline (black by default); completeness ``sum(attr) ~ f(x) - f(baseline)`` reported.
- :func:`smoothgrad`: Smilkov et al. 2017: any gradient method averaged over noisy copies.
- :func:`deletion_insertion`: Petsiuk, Das, Saenko 2018 (RISE): remove (or reveal) the most
  attributed pixels step by step and record the class probability; area under each curve.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from atlas.models import AtlasModel, capture, finishing_order

log = logging.getLogger(__name__)

AttributionFn = Callable[[AtlasModel, torch.Tensor, torch.Tensor], torch.Tensor]

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
"""The ImageNet mean colour in RGB [0, 1]: the grey of :func:`occlusion`'s patch by default."""


def _targets(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None) -> torch.Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    if isinstance(target, int):
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    return target.to(x.device).long()


def input_gradient(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """d logit_target / d x, shape (N, 3, H, W)."""
    target = _targets(model, x, target)
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        picked = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, x)
    return grad


def saliency(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Vanilla gradient saliency: max over channels of |d logit / d x|, (N, H, W)."""
    return input_gradient(model, x, target).abs().amax(1)


@contextlib.contextmanager
def _modified_relus(model: nn.Module, rule: str = "guided") -> Iterator[None]:
    """Change the backward pass of every ReLU of ``model`` for the block.

    ``rule="guided"`` (guided backpropagation): pass a gradient only where it is positive and the
    forward input was positive. ``rule="deconvnet"``: pass it where it is positive, whatever the
    forward input (Zeiler & Fergus reconstruct through a ReLU with the ReLU itself).
    """
    if rule not in ("guided", "deconvnet"):
        raise ValueError(f"unknown ReLU rule {rule!r}; use 'guided' or 'deconvnet'")
    guided = rule == "guided"

    class ModifiedReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, inp):
            out = inp.clamp(min=0)
            ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            (out,) = ctx.saved_tensors
            passed = grad.clamp(min=0)
            return passed * (out > 0).to(grad.dtype) if guided else passed

    handles = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_hook(lambda _m, inp, _o: ModifiedReLU.apply(inp[0])))
    original = F.relu
    F.relu = lambda inp, inplace=False: ModifiedReLU.apply(inp)  # functional ReLUs (torchvision's googlenet)
    try:
        yield
    finally:
        F.relu = original
        for h in handles:
            h.remove()


def modified_relu_gradient(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                           rule: str = "guided") -> torch.Tensor:
    """d logit / d x with every ReLU's backward changed by ``rule`` ("guided" or "deconvnet",
    see :func:`_modified_relus`), (N, 3, H, W): the signal of guided backpropagation and of the
    deconvnet before their reduction over channels (Captum's ``GuidedBackprop`` and
    ``Deconvolution``)."""
    target = _targets(model, x, target)
    with _modified_relus(model, rule):
        return input_gradient(model, x, target)


def guided_backprop(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Guided backpropagation: max over channels of the positive-guided gradient, (N, H, W)."""
    return modified_relu_gradient(model, x, target, rule="guided").clamp(min=0).amax(1)


def deconvnet(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None) -> torch.Tensor:
    """Deconvnet (Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional Networks"):
    the input gradient with every ReLU's backward replaced by a ReLU of the incoming gradient
    (no forward mask). Reduced like :func:`guided_backprop` (positive part, max over channels)
    so the two differ only by the rule, (N, H, W)."""
    return modified_relu_gradient(model, x, target, rule="deconvnet").clamp(min=0).amax(1)


_LAST_SPATIAL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def last_spatial_layer(model: AtlasModel) -> str:
    """The name of the last layer of ``model`` whose output is spatial (N, C, h, w) with more than
    one position: the "last convolutional layer" on which Grad-CAM and Grad-CAM++ are defined
    (Selvaraju et al. 2017, sec. 3), found by one forward pass of a seeded random image in the
    order the modules finish (a block finishes after its parts, so a block is preferred over its
    last ReLU). ``inception5b`` for InceptionV1, ``layer4`` for a torchvision ResNet. Cached per model.

    Raises ``ValueError`` for a network without a spatial layer (e.g. a token-only transformer).
    """
    cached = _LAST_SPATIAL.get(model)
    if cached is not None:
        return cached
    finished = finishing_order(
        model, keep=lambda out: torch.is_tensor(out) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1)
    if not finished:
        raise ValueError(f"model {model.name!r} has no spatial (N, C, h, w) layer, so Grad-CAM has no default layer; "
                         "pass layer= (a spatial layer, see `atlas layers MODEL --spatial`)")
    _LAST_SPATIAL[model] = finished[-1]
    return finished[-1]


def _layer_and_gradient(model: AtlasModel, x: torch.Tensor, target: torch.Tensor, layer: str,
                        method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The activations ``A`` of a spatial ``layer`` and ``d logit_target / d A``, both (N, C, h, w)
    and detached: what Grad-CAM, Grad-CAM++ and the layer input x gradient are made of.
    ``method`` names the caller in the error for a layer that is not spatial."""
    with torch.enable_grad(), capture(model, [layer]) as acts:
        logits = model(x.detach().clone().requires_grad_(True))  # params are frozen: the graph starts at x
        a = acts[layer]
        if a.dim() != 4:
            raise ValueError(f"{method} needs a spatial layer (N, C, H, W); {layer!r} is not spatial (output "
                             f"{tuple(a.shape)}): pick one of `atlas layers {model.name} --spatial`")
        (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    return a.detach(), g


def grad_cam(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
             layer: str | None = None) -> torch.Tensor:
    """Grad-CAM at ``layer`` (must be spatial; default :func:`last_spatial_layer`, the last
    convolutional layer as in the paper), upsampled to the input size, (N, H, W)."""
    layer = layer or last_spatial_layer(model)
    a, g = _layer_and_gradient(model, x, _targets(model, x, target), layer, "Grad-CAM")
    weights = g.mean((2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def grad_cam_pp(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                layer: str | None = None) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay, Sarkar, Howlader, Balasubramanian 2018) at ``layer`` (default
    :func:`last_spatial_layer`), (N, H, W).

    With ``g = d S / d A`` (S the target logit) and the exp(S) trick (higher derivatives of
    exp(S) for a piecewise-linear network are powers of ``g``), the per-position weights are
    ``alpha_c(i, j) = g^2 / (2 g^2 + sum_ab A_c(a, b) g^3)`` (0 where the denominator is 0), the
    channel weights ``w_c = sum_ij alpha_c(i, j) ReLU(g_c(i, j))`` (the common factor exp(S)
    dropped) and the map ``ReLU(sum_c w_c A_c)``, upsampled bilinearly to the input. Unlike
    Grad-CAM's mean gradient, negative gradients elsewhere cannot cancel a channel's positive
    evidence.
    """
    layer = layer or last_spatial_layer(model)
    a, g = _layer_and_gradient(model, x, _targets(model, x, target), layer, "Grad-CAM++")
    g2, g3 = g**2, g**3
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
    weights = (alpha * F.relu(g)).sum((2, 3), keepdim=True)
    cam_map = F.relu((weights * a).sum(1, keepdim=True))
    return F.interpolate(cam_map, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def layer_gradient_x_activation(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None,
                                layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Input x gradient at a layer: ``h * d logit_target / d h`` per channel and position, and
    the activations ``h`` themselves, both (N, C, h, w) at a spatial ``layer`` (Captum's
    ``LayerGradientXActivation``). Summed over channels it is the paper's per-position
    attribution of a layer's activation vector to a class (what collect stores per row)."""
    h, g = _layer_and_gradient(model, x, _targets(model, x, target), layer, "the layer input x gradient")
    return h * g, h


@dataclass(frozen=True)
class GapLinearHead:
    """Where a network ends in global average pooling and a linear classifier:
    ``logits = linear(mean_hw(A))`` with ``A = output of layer`` (N, C, h, w)."""

    layer: str
    linear: str
    weight: torch.Tensor  # (K, C)
    bias: torch.Tensor  # (K,)


_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def find_gap_linear_head(model: AtlasModel) -> GapLinearHead:
    """Find the global-average-pooling + linear head of ``model`` by one forward pass of a seeded
    random image: the logits must be the output of an ``nn.Linear`` whose input equals the
    spatial mean of a spatial layer's output (the last such layer to run). Cached per model.

    Raises ``ValueError`` (naming Grad-CAM as the alternative) for a network without such a head,
    e.g. VGG's stack of linear layers.
    """
    cached = _HEADS.get(model)
    if cached is not None:
        lin = model.layer(cached[1])
        return GapLinearHead(cached[0], cached[1], lin.weight.detach(), _bias(lin))
    outputs: list[tuple[str, torch.Tensor]] = []
    linear_io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, m in model.net.named_modules():
        if not name:
            continue
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(
                lambda _m, inp, out, name=name: linear_io.__setitem__(name, (inp[0].detach(), out.detach()))))
        handles.append(m.register_forward_hook(
            lambda _m, _inp, out, name=name: outputs.append((name, out.detach())) if torch.is_tensor(out) else None))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, model.input_size, model.input_size, generator=gen).to(model.device)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    head = next((n for n, (_i, o) in linear_io.items() if o.shape == logits.shape and torch.allclose(o, logits)), None)
    if head is None:
        raise ValueError(f"model {model.name!r} does not end in a linear layer that gives its logits, so CAM "
                         "(Zhou et al. 2016) does not apply; use grad_cam, which works at any spatial layer")
    feats = linear_io[head][0].flatten(1)
    for name, out in reversed(outputs):
        if out.dim() == 4 and out.shape[1] == feats.shape[1] and out.shape[2] * out.shape[3] > 1:
            pooled = out.mean((2, 3))
            if torch.allclose(pooled, feats, rtol=1e-4, atol=1e-5 * float(feats.abs().max().clamp(min=1))):
                _HEADS[model] = (name, head)
                lin = model.layer(head)
                log.debug("CAM head of %s: mean over %s -> %s", model.name, name, head)
                return GapLinearHead(name, head, lin.weight.detach(), _bias(lin))
    raise ValueError(f"the classifier {head!r} of model {model.name!r} does not read a global average of a spatial "
                     "layer, so CAM (Zhou et al. 2016) does not apply; use grad_cam at a spatial layer instead")


def _bias(lin: nn.Module) -> torch.Tensor:
    return lin.bias.detach() if getattr(lin, "bias", None) is not None else torch.zeros(lin.weight.shape[0])


def cam(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
        upsample: bool = True) -> torch.Tensor:
    """Class activation map (Zhou, Khosla, Lapedriza, Oliva, Torralba 2016, "Learning Deep
    Features for Discriminative Localization"): ``CAM_k(y, x) = sum_c W[k, c] A_c(y, x)`` at the
    layer whose global average feeds the linear classifier ``W`` (:func:`find_gap_linear_head`).

    Exact for such networks: the spatial mean of ``CAM_k`` plus ``bias_k`` is the logit ``k``.
    Not rectified (negative evidence stays negative). Returns (N, H, W) upsampled bilinearly to
    the input, or with ``upsample=False`` (N, h, w) on the layer's grid.
    """
    head = find_gap_linear_head(model)
    target = _targets(model, x, target)
    with torch.no_grad(), capture(model, [head.layer], detach=True) as acts:
        model(x)
        a = acts[head.layer]
    w = head.weight.to(a)[target]  # (N, C)
    cam_map = (w[:, :, None, None] * a).sum(1, keepdim=True)
    if not upsample:
        return cam_map[:, 0]
    return F.interpolate(cam_map, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _patch_starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:  # the last patch touches the border, so every pixel is covered
        starts.append(size - patch)
    return starts


def occlusion(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
              patch: int = 32, stride: int = 16, fill: Sequence[float] | float = IMAGENET_MEAN_RGB,
              batch_size: int = 16) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014): for every position of a ``patch`` x ``patch``
    square slid with ``stride`` (the last row and column of positions touch the border), the
    image with that square filled by ``fill`` (an RGB [0, 1] colour, by default the ImageNet
    mean) is scored, and the drop ``logit(x) - logit(occluded)`` of the target is spread over the
    square's pixels; each pixel gets the mean drop of the squares covering it. ``batch_size``
    occluded copies per forward pass. Returns (N, H, W); costs ``ceil((H - patch) / stride + 1)
    * ceil((W - patch) / stride + 1)`` forward passes per image.
    """
    n, c, h, w = x.shape
    if not 1 <= patch <= min(h, w):
        raise ValueError(f"occlusion patch {patch} must be between 1 and the image side {min(h, w)}")
    if stride < 1:
        raise ValueError(f"occlusion stride must be at least 1, not {stride}")
    target = _targets(model, x, target)
    colour = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1)
    if colour.numel() not in (1, c):
        raise ValueError(f"fill must be one value or {c} (one per channel), not {colour.numel()}")
    colour = colour.expand(c).view(1, c, 1, 1)
    boxes = [(y0, x0) for y0 in _patch_starts(h, patch, stride) for x0 in _patch_starts(w, patch, stride)]
    heat = torch.zeros(n, h, w, dtype=x.dtype, device=x.device)
    count = torch.zeros(h, w, dtype=x.dtype, device=x.device)
    for y0, x0 in boxes:
        count[y0:y0 + patch, x0:x0 + patch] += 1
    with torch.no_grad():
        base = model(x).gather(1, target[:, None])[:, 0]
        for i in range(n):
            for start in range(0, len(boxes), batch_size):
                chunk = boxes[start:start + batch_size]
                batch = x[i:i + 1].repeat(len(chunk), 1, 1, 1)
                for j, (y0, x0) in enumerate(chunk):
                    batch[j, :, y0:y0 + patch, x0:x0 + patch] = colour[0]
                drops = base[i] - model(batch)[:, int(target[i])]
                for (y0, x0), d in zip(chunk, drops):
                    heat[i, y0:y0 + patch, x0:x0 + patch] += d
    return heat / count


@dataclass
class IGOSResult:
    """I-GOS: ``map`` (N, H, W) = 1 - the upsampled mask (high = deleting it hurts the class),
    ``mask`` (N, s, s) the optimized low-resolution mask (1 keeps the pixel, 0 replaces it by
    the baseline), ``losses`` the objective per image at the start and after each iteration
    (iterations + 1 rows of N values) and ``steps`` the line-search step taken at each iteration
    (0 where none lowered the objective)."""

    map: torch.Tensor
    mask: torch.Tensor
    losses: list[list[float]] = field(default_factory=list)
    steps: list[list[float]] = field(default_factory=list)


def igos(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
         size: int = 28, iterations: int = 10, ig_steps: int = 10, l1: float = 1.0, tv: float = 20.0,
         step: float = 8.0, decay: float = 0.2, armijo: float = 1e-4, min_step: float = 1e-5,
         baseline: torch.Tensor | None = None, blur_sigma: float = 10.0, noise: float = 0.05,
         insertion: bool = True, generator: torch.Generator | None = None) -> IGOSResult:
    """I-GOS (Qi, Khorram, Li 2020, "Visualizing Deep Networks by Optimizing with Integrated
    Gradients"): optimize a ``size`` x ``size`` mask ``M`` in [0, 1], upsampled bilinearly to the
    image, with ``phi(I, B, M) = I * M + B * (1 - M)`` (``B``: ``baseline``, by default the
    image blurred with ``blur_sigma`` like the deletion/insertion metric), minimizing

        D(M) - I(M) + l1 * mean|1 - M| + tv * TV2(M)

    where the deletion score ``D(M) = 1/T sum_t p(phi(I, B, t/T M))`` and the insertion score
    ``I(M) = 1/T sum_t p(phi(B, I, t/T M))`` (``p``: the target's softmax probability, ``T =
    ig_steps``) average along the straight path from the baseline, so their gradients are the
    integrated gradients of the paper; ``TV2`` is the mean squared difference of neighbouring mask
    cells. Gaussian noise of std ``noise`` is added to the path images of the gradient (as the
    authors do) but not to the line search. Each of the ``iterations`` descends along the summed
    gradient with a backtracking line search: start at ``step``, multiply by ``decay`` until
    the objective falls by at least ``armijo * step * |grad|^2`` (below ``min_step``, the last
    step is taken only if it lowers the objective at all, else the mask stays), and clip the mask
    to [0, 1]. ``insertion=False`` keeps only the deletion term.
    Defaults follow the authors' code where it has them (L1 weight 1, TV weight 20, 28 x 28 mask,
    first step 8, decay 0.2, Armijo constant 1e-4, smallest step 1e-5).

    Cost per image and iteration: ``2 * ig_steps`` forward + backward passes for the gradient
    and ``2 * ig_steps`` forward passes per line-search trial. The defaults (10 iterations,
    10 steps) are cheaper than the authors' (15 to 20 iterations, 15 to 20 steps) to stay usable on
    a CPU; raise them for maps closer to the paper's.
    """
    if size < 1 or iterations < 1 or ig_steps < 1:
        raise ValueError(f"I-GOS needs size, iterations and ig_steps >= 1 (got {size}, {iterations}, {ig_steps})")
    if not 0 < decay < 1:
        raise ValueError(f"line-search decay must be in (0, 1), not {decay}")
    target = _targets(model, x, target)
    x = x.detach()
    base = _gaussian_blur(x, blur_sigma) if baseline is None else baseline.to(x).expand_as(x).detach()
    n, _, h, w = x.shape
    ts = (torch.arange(1, ig_steps + 1, dtype=x.dtype, device=x.device) / ig_steps).view(-1, 1, 1, 1)

    def up(m: torch.Tensor) -> torch.Tensor:  # (1, 1, s, s) -> (1, 1, H, W)
        return F.interpolate(m, size=(h, w), mode="bilinear", align_corners=True)

    def regulariser(m: torch.Tensor) -> torch.Tensor:
        return l1 * (1 - m).abs().mean() + tv * (((m[..., 1:, :] - m[..., :-1, :]) ** 2).mean()
                                                 + ((m[..., :, 1:] - m[..., :, :-1]) ** 2).mean())

    def path_score(src: torch.Tensor, dst: torch.Tensor, m_up: torch.Tensor, t: int, eps: float) -> torch.Tensor:
        imgs = src * (ts * m_up) + dst * (1 - ts * m_up)  # (T, 3, H, W): phi(src, dst, t/T M)
        if eps > 0:
            imgs = imgs + eps * torch.randn(imgs.shape, generator=generator, device="cpu").to(imgs)
        return model(imgs).softmax(1)[:, t].mean()

    def objective(i: int, m: torch.Tensor) -> float:
        with torch.no_grad():
            m_up, t = up(m), int(target[i])
            val = path_score(x[i:i + 1], base[i:i + 1], m_up, t, 0.0) + regulariser(m)
            if insertion:
                val = val - path_score(base[i:i + 1], x[i:i + 1], m_up, t, 0.0)
        return float(val)

    masks = torch.ones(n, 1, size, size, dtype=x.dtype, device=x.device)
    current = [objective(i, masks[i:i + 1]) for i in range(n)]
    losses: list[list[float]] = [list(current)]
    steps: list[list[float]] = []
    for _ in range(iterations):
        steps.append([])
        for i in range(n):
            t = int(target[i])
            m = masks[i:i + 1].clone().requires_grad_(True)
            with torch.enable_grad():
                m_up = up(m)
                total = path_score(x[i:i + 1], base[i:i + 1], m_up, t, noise) + regulariser(m)
                if insertion:
                    total = total - path_score(base[i:i + 1], x[i:i + 1], m_up, t, noise)
                (grad,) = torch.autograd.grad(total, m)
            sq = float((grad**2).sum())
            alpha = step
            while True:
                trial = (masks[i:i + 1] - alpha * grad).clamp(0, 1)
                value = objective(i, trial)
                if value <= current[i] - armijo * alpha * sq:
                    break
                if alpha * decay < min_step:  # no step decreases the objective enough
                    alpha = alpha if value < current[i] else 0.0
                    break
                alpha *= decay
            if alpha > 0:
                masks[i:i + 1] = trial
                current[i] = value
            steps[-1].append(alpha)
        losses.append(list(current))
    heat = 1 - F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)[:, 0]
    return IGOSResult(heat, masks[:, 0], losses, steps)


@dataclass
class IGResult:
    """Integrated gradients: ``attribution`` (N, 3, H, W), its channel-summed ``map`` (N, H, W),
    and the completeness check per image: ``sum(attribution)`` vs ``f(x) - f(baseline)``."""

    attribution: torch.Tensor
    map: torch.Tensor
    attribution_sum: torch.Tensor
    logit_difference: torch.Tensor

    @property
    def completeness_error(self) -> torch.Tensor:
        """|sum(attr) - (f(x) - f(b))| / |f(x) - f(b)|, per image."""
        return (self.attribution_sum - self.logit_difference).abs() / self.logit_difference.abs().clamp(min=1e-8)


def integrated_gradients(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                         baseline: torch.Tensor | float = 0.0, steps: int = 32,
                         batch_size: int = 16) -> IGResult:
    """Integrated gradients from ``baseline`` (a tensor like ``x`` or a gray level) in ``steps``.

    Uses the midpoint Riemann sum, whose error falls as 1/steps^2 for smooth paths.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    target = _targets(model, x, target)
    x = x.detach()
    base = torch.full_like(x, float(baseline)) if not torch.is_tensor(baseline) else baseline.to(x).expand_as(x)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for start in range(0, steps, batch_size):
            a = alphas[start:start + batch_size].view(-1, 1, 1, 1)
            path = base[n:n + 1] + a * (x[n:n + 1] - base[n:n + 1])
            total[n] += input_gradient(model, path, int(target[n])).sum(0)
    attr = (x - base) * total / steps
    with torch.no_grad():
        diff = (model(x) - model(base)).gather(1, target[:, None])[:, 0]
    return IGResult(attr, attr.sum(1), attr.flatten(1).sum(1), diff)


def smoothgrad(method: AttributionFn, model: AtlasModel, x: torch.Tensor,
               target: torch.Tensor | int | None = None, *, samples: int = 16, noise: float = 0.15,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Average ``method`` over ``samples`` copies of ``x`` with Gaussian noise of std
    ``noise * (max - min)`` (Smilkov et al. use 10-20%)."""
    target = _targets(model, x, target)
    sigma = noise * (x.amax((1, 2, 3), keepdim=True) - x.amin((1, 2, 3), keepdim=True))
    acc = None
    for _ in range(samples):
        eps = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        m = method(model, (x + sigma * eps).clamp(0, 1), target)
        acc = m if acc is None else acc + m
    return acc / samples


@dataclass
class CurveResult:
    """Probability of the class after each step: ``deletion`` and ``insertion`` (N, steps + 1),
    and the normalised areas under them (trapezoid rule on [0, 1])."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self.insertion, self.fractions, axis=1)


def deletion_insertion(model: AtlasModel, x: torch.Tensor, maps: torch.Tensor,
                       target: torch.Tensor | int | None = None, *, steps: int = 16,
                       blur_sigma: float = 10.0) -> CurveResult:
    """Deletion and insertion curves (Petsiuk et al. 2018) for attribution ``maps`` (N, H, W).

    Deletion: pixels in descending order of attribution are replaced by black, a fraction
    ``k / steps`` at a time; a good map makes the probability fall fast (low AUC). Insertion:
    starting from a blurred image, the most attributed pixels are revealed first; a good map
    makes it rise fast (high AUC). Ties are broken by a fixed pixel order.
    """
    target = _targets(model, x, target)
    n, _, h, w = x.shape
    order = maps.flatten(1).argsort(dim=1, descending=True)  # (N, H*W)
    blurred = _gaussian_blur(x, blur_sigma)
    fractions = np.linspace(0, 1, steps + 1)
    dele = np.zeros((n, steps + 1))
    ins = np.zeros((n, steps + 1))
    with torch.no_grad():
        for k, frac in enumerate(fractions):
            top = int(round(frac * h * w))
            mask = torch.zeros(n, h * w, device=x.device)
            mask.scatter_(1, order[:, :top], 1.0)
            mask = mask.view(n, 1, h, w)
            deleted = x * (1 - mask)
            inserted = blurred * (1 - mask) + x * mask
            probs = model(torch.cat([deleted, inserted])).softmax(1)
            p = probs.gather(1, torch.cat([target, target])[:, None])[:, 0].cpu().numpy()
            dele[:, k], ins[:, k] = p[:n], p[n:]
    return CurveResult(fractions, dele, ins)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


METHODS: dict[str, AttributionFn] = {
    "saliency": saliency,
    "guided_backprop": guided_backprop,
    "deconvnet": deconvnet,
    "grad_cam": grad_cam,
    "grad_cam_pp": grad_cam_pp,
    "cam": cam,
    "integrated_gradients": lambda m, x, t: integrated_gradients(m, x, t).map.abs(),
    "occlusion": occlusion,
    "igos": lambda m, x, t: igos(m, x, t).map,
}


def check_methods(methods: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the entries of ``methods`` that are not names of
    :data:`METHODS`, and the names that are."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(METHODS)}")
