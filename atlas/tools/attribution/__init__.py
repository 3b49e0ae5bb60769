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

The package, one idea a module: :mod:`~atlas.tools.attribution.gradients` (the input gradient,
guided backprop, deconvnet, integrated gradients, SmoothGrad), :mod:`~atlas.tools.attribution.cams`
(Grad-CAM, Grad-CAM++, CAM and the layer input x gradient at a spatial layer),
:mod:`~atlas.tools.attribution.perturbation` (occlusion, I-GOS),
:mod:`~atlas.tools.attribution.evaluation` (deletion / insertion) and
:mod:`~atlas.tools.attribution.methods` (:data:`METHODS`, the methods by name).
"""

from atlas.tools.attribution.cams import (
    GapLinearHead,
    cam,
    find_gap_linear_head,
    grad_cam,
    grad_cam_pp,
    last_spatial_layer,
    layer_gradient_x_activation,
)
from atlas.tools.attribution.evaluation import CurveResult, deletion_insertion

# _gaussian_blur and _modified_relus (below): private, but tests/tools/test_attribution.py imports them from here
from atlas.tools.attribution.evaluation import _gaussian_blur as _gaussian_blur
from atlas.tools.attribution.gradients import (
    AttributionFn,
    IGResult,
    deconvnet,
    guided_backprop,
    input_gradient,
    integrated_gradients,
    modified_relu_gradient,
    saliency,
    smoothgrad,
)
from atlas.tools.attribution.gradients import _modified_relus as _modified_relus
from atlas.tools.attribution.methods import METHODS, check_methods
from atlas.tools.attribution.perturbation import IMAGENET_MEAN_RGB, IGOSResult, igos, occlusion

__all__ = [
    "IMAGENET_MEAN_RGB",
    "METHODS",
    "AttributionFn",
    "CurveResult",
    "GapLinearHead",
    "IGOSResult",
    "IGResult",
    "cam",
    "check_methods",
    "deconvnet",
    "deletion_insertion",
    "find_gap_linear_head",
    "grad_cam",
    "grad_cam_pp",
    "guided_backprop",
    "igos",
    "input_gradient",
    "integrated_gradients",
    "last_spatial_layer",
    "layer_gradient_x_activation",
    "modified_relu_gradient",
    "occlusion",
    "saliency",
    "smoothgrad",
]
