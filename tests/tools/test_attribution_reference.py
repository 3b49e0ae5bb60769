"""Every attribution method that Captum implements, pinned to Captum on real photos.

The real BVLC InceptionV1 and real ImageNet sample photos; the same target class, baseline and
number of steps on both sides. Where this project reduces a signal over channels (saliency,
guided backprop, deconvnet: max over channels; integrated gradients: sum over channels; the
per-position attribution: sum over channels), the comparison is made on the signal before that
step, and the reduction is then checked on its own. Captum is part of the ``test`` extra
(``pip install -e '.[test]'``); without it these tests skip and say so.

Tolerance: ``rtol=1e-4`` and an absolute floor of ``1e-4`` of the largest value of Captum's
map. Both sides run the same float32 operations in possibly different orders, so they agree
to rounding; a different rule (a missed ReLU, another Riemann rule, another upsampling) is off
by whole percents.
"""

from __future__ import annotations

import pytest
import torch

captum_attr = pytest.importorskip(
    "captum.attr", reason="captum is not installed; it comes with the test extra: pip install -e '.[test]'")

from atlas.tools import attribution as attr  # noqa: E402
from atlas.tools.explain import layer_position_attribution, load_photo  # noqa: E402

pytestmark = [
    pytest.mark.shared,
    # Captum's own notes: it turns on requires_grad and hooks the ReLUs for the call
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU activations"),
]

PHOTOS = (0, 801)  # tench; snorkel (the sample photos are in class order)


@pytest.fixture(scope="module")
def batch(inceptionv1, sample_paths):
    x = torch.cat([load_photo(sample_paths[i], inceptionv1) for i in PHOTOS])
    with torch.no_grad():
        target = inceptionv1(x).argmax(1)
    return x, target


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    theirs = theirs.detach().to(ours.dtype)
    assert ours.shape == theirs.shape
    assert float(theirs.abs().max()) > 0, "the reference map is all zeros: nothing was compared"
    torch.testing.assert_close(ours.detach(), theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_saliency_equals_captum(inceptionv1, batch):
    x, t = batch
    theirs = captum_attr.Saliency(inceptionv1).attribute(x, target=t, abs=False)
    close(attr.input_gradient(inceptionv1, x, t), theirs)
    close(attr.saliency(inceptionv1, x, t), theirs.abs().amax(1))  # the project's reduction: max over channels


def test_guided_backprop_equals_captum(inceptionv1, batch):
    x, t = batch
    theirs = captum_attr.GuidedBackprop(inceptionv1).attribute(x, target=t)
    ours = attr.modified_relu_gradient(inceptionv1, x, t, rule="guided")
    close(ours, theirs)
    close(attr.guided_backprop(inceptionv1, x, t), theirs.clamp(min=0).amax(1))
    # guided backprop really differs from the plain gradient here (every ReLU is reached)
    plain = attr.input_gradient(inceptionv1, x, t)
    assert float((ours - plain).abs().max()) > 0.1 * float(plain.abs().max())


def test_deconvnet_equals_captum(inceptionv1, batch):
    x, t = batch
    theirs = captum_attr.Deconvolution(inceptionv1).attribute(x, target=t)
    close(attr.modified_relu_gradient(inceptionv1, x, t, rule="deconvnet"), theirs)
    close(attr.deconvnet(inceptionv1, x, t), theirs.clamp(min=0).amax(1))


@pytest.mark.parametrize("layer", [None, "inception4c"])
def test_grad_cam_equals_captum_layer_grad_cam(inceptionv1, batch, layer):
    x, t = batch
    name = layer or attr.last_spatial_layer(inceptionv1)
    assert layer is not None or name == "inception5b"  # the default is the last convolutional layer
    cam = captum_attr.LayerGradCam(inceptionv1, inceptionv1.layer(name)).attribute(
        x, target=t, relu_attributions=True)
    theirs = captum_attr.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    close(attr.grad_cam(inceptionv1, x, t, layer=layer), theirs)


def test_integrated_gradients_equals_captum(inceptionv1, batch):
    x, t = batch
    x, t = x[:1], t[:1]
    steps = 16
    theirs = captum_attr.IntegratedGradients(inceptionv1).attribute(
        x, baselines=torch.zeros_like(x), target=t, n_steps=steps, method="riemann_middle")
    ig = attr.integrated_gradients(inceptionv1, x, t, baseline=0.0, steps=steps)
    close(ig.attribution, theirs)
    close(ig.map, theirs.sum(1))  # the project's map: the sum over channels


def test_occlusion_equals_captum(inceptionv1, batch):
    x, t = batch
    x, t = x[1:], t[1:]
    patch, stride = 56, 28  # overlapping squares: each pixel's value is the mean over the squares that cover it
    fill = torch.tensor(attr.IMAGENET_MEAN_RGB).view(1, 3, 1, 1).expand_as(x).contiguous()
    theirs = captum_attr.Occlusion(inceptionv1).attribute(
        x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride), baselines=fill, target=t,
        perturbations_per_eval=16)
    assert torch.equal(theirs[:, 0], theirs[:, 2])  # the window spans the channels: one value per pixel
    close(attr.occlusion(inceptionv1, x, t, patch=patch, stride=stride), theirs[:, 0])


def test_layer_input_x_gradient_equals_captum(inceptionv1, batch):
    """The per-position attribution behind collect's and explain's layer maps."""
    x, t = batch
    layer = "inception4c"
    theirs = captum_attr.LayerGradientXActivation(inceptionv1, inceptionv1.layer(layer)).attribute(x, target=t)
    prod, _h = attr.layer_gradient_x_activation(inceptionv1, x, t, layer)
    close(prod, theirs)
    a, vecs = layer_position_attribution(inceptionv1, x[:1], int(t[0]), layer)
    close(torch.from_numpy(a), theirs[0].sum(0))  # explain's per-position map: the sum over channels
    assert vecs.shape == (14 * 14, 512)
