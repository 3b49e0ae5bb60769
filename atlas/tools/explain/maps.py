"""One photo explained: every attribution method's map over its pixels (:func:`explain_photo`,
:func:`method_map`, :class:`MethodSettings`) and the per-position attribution at a layer
(:func:`layer_position_attribution`), gathered in an :class:`Explanation`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.resources import class_index
from atlas.tools import attribution as attr

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
