"""Class activation maps at a spatial layer: Grad-CAM and Grad-CAM++ (:func:`grad_cam`,
:func:`grad_cam_pp`) at the last spatial layer by default (:func:`last_spatial_layer`), the layer
input x gradient (:func:`layer_gradient_x_activation`), and CAM (:func:`cam`) at the global average
pooling + linear head (:func:`find_gap_linear_head`)."""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atlas.models import AtlasModel, capture, finishing_order
from atlas.tools.attribution.gradients import _targets

log = logging.getLogger("atlas.tools.attribution")

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
