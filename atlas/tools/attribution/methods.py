"""Every attribution method by name (:data:`METHODS`, each a map (N, H, W) from a model, images
and targets), and the check of names against it (:func:`check_methods`)."""

from __future__ import annotations

from collections.abc import Sequence

from atlas.tools.attribution.cams import cam, grad_cam, grad_cam_pp
from atlas.tools.attribution.gradients import AttributionFn, deconvnet, guided_backprop, integrated_gradients, saliency
from atlas.tools.attribution.perturbation import igos, occlusion

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
