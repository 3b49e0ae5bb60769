"""Attribution maps against models whose gradients are known in closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from atlas.models import load_model
from atlas.tools.attribution import (
    deletion_insertion,
    grad_cam,
    guided_backprop,
    input_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
)


class Linear(nn.Module):
    """logits = W . flatten(x): d logit_c / d x = W_c everywhere."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w.flatten(1).T


class Quadratic(nn.Module):
    """logit_0 = sum(x^2), logit_1 = -sum(x): d logit_0 / dx = 2x."""

    def forward(self, x):
        return torch.stack([(x**2).flatten(1).sum(1), -x.flatten(1).sum(1)], 1)


def test_saliency_of_a_linear_model_is_abs_weights():
    torch.manual_seed(0)
    w = torch.randn(3, 3, 4, 4)
    model = load_model(Linear(w), input_size=4)
    x = torch.rand(2, 3, 4, 4)
    s = saliency(model, x, torch.tensor([1, 2]))
    assert torch.allclose(s[0], w[1].abs().amax(0)) and torch.allclose(s[1], w[2].abs().amax(0))


def test_integrated_gradients_exact_for_quadratic_and_complete():
    model = load_model(Quadratic(), input_size=4)
    x = torch.rand(2, 3, 4, 4)
    ig = integrated_gradients(model, x, 0, steps=8)
    # path x(a) = a x: integral of 2 a x da from 0..1 = x, times x -> x^2, sum = f(x) - f(0)
    assert torch.allclose(ig.attribution, x**2, atol=1e-5)
    assert torch.allclose(ig.attribution_sum, (x**2).flatten(1).sum(1), atol=1e-4)
    assert (ig.completeness_error < 1e-4).all()


def test_guided_backprop_passes_only_positive_gradients():
    # logit = sum(v * relu(x)): gradient v where x > 0; guided keeps only v > 0 parts
    v = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x):
            return (self.relu(x) * v).flatten(1).sum(1, keepdim=True)

    model = load_model(Net(), input_size=2)
    x = torch.tensor([0.5, 0.5, -0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    plain = input_gradient(model, x, 0)
    assert torch.allclose(plain[0, :, 0, 0], torch.tensor([1.0, -2.0, 0.0]))
    guided = guided_backprop(model, x, 0)
    assert torch.allclose(guided[0], torch.ones(2, 2))  # max over channels of (1, 0, 0)
    assert F.relu is torch.nn.functional.relu  # patch undone


def test_grad_cam_weights_channels_by_mean_gradient():
    # feature map A = conv(x) with 2 channels, logit = 3*mean(A_0) - mean(A_1)
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.feat = nn.Identity()

        def forward(self, x):
            a = self.feat(x[:, :2])
            return torch.stack([3 * a[:, 0].mean((1, 2)) - a[:, 1].mean((1, 2))], 1)

    model = load_model(Net(), input_size=4)
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0, :2] = 1.0  # channel 0 lit in the top half
    x[0, 1, :, :2] = 1.0  # channel 1 lit in the left half
    cam = grad_cam(model, x, 0, layer="feat")
    # alpha = (3/16, -1/16); cam = relu(3/16 A0 - 1/16 A1)
    expected = F.relu(3 / 16 * x[0, 0] - 1 / 16 * x[0, 1])
    assert torch.allclose(cam[0], expected, atol=1e-6)


def test_smoothgrad_is_seeded_and_averages():
    model = load_model(Quadratic(), input_size=4)
    x = torch.rand(1, 3, 4, 4)
    a = smoothgrad(saliency, model, x, 0, samples=4, generator=torch.Generator().manual_seed(1))
    b = smoothgrad(saliency, model, x, 0, samples=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 4, 4)


def test_deletion_insertion_rank_a_good_map_above_a_bad_one():
    # class 0 probability rises with the contrast (mean square) of the left half only
    class Net(nn.Module):
        def forward(self, x):
            left = (x[:, :, :, :4] ** 2).mean((1, 2, 3))
            return torch.stack([10 * left, torch.full_like(left, 5.0)], 1)

    model = load_model(Net(), input_size=8)
    x = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8)  # checkerboard
    good = torch.zeros(1, 8, 8)
    good[:, :, :4] = 1.0
    bad = 1.0 - good
    g = deletion_insertion(model, x, good, 0, steps=8, blur_sigma=1.0)
    b = deletion_insertion(model, x, bad, 0, steps=8, blur_sigma=1.0)
    assert g.deletion_auc[0] < b.deletion_auc[0]
    assert g.insertion_auc[0] > b.insertion_auc[0]
    assert g.deletion.shape == (1, 9) and abs(g.deletion[0, 0] - g.insertion[0, -1]) < 1e-6


# ---- deconvnet, Grad-CAM++, CAM, occlusion, I-GOS -------------------------------------------


class TwoReLUNet(nn.Module):
    """logit = u . relu(M relu(x)) per pixel (1x1 conv M), summed: one nn.ReLU, one F.relu."""

    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()
        self.mix = nn.Conv2d(3, 2, 1, bias=False)
        self.mix.weight.data = torch.tensor([[1.0, -2.0, 2.0], [1.0, 1.0, -1.0]]).view(2, 3, 1, 1)
        self.u = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)

    def forward(self, x):
        return (F.relu(self.mix(self.relu(x))) * self.u).flatten(1).sum(1, keepdim=True)


def test_deconvnet_ignores_the_forward_mask_and_differs_from_guided_backprop():
    from atlas.tools.attribution import _modified_relus, deconvnet

    model = load_model(TwoReLUNet(), input_size=2)
    x = torch.tensor([0.5, 0.5, -0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    # forward: h = relu(x) = (.5, .5, 0); z = M h = (-.5, 1): the first hidden unit is off.
    # plain: dz = u * [z > 0] = (0, -1); dh = M^T dz = (-1, -1, 1); dx = dh * [x > 0] = (-1, -1, 0)
    assert torch.allclose(input_gradient(model, x, 0)[0, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    # deconvnet: dz = relu(u) = (2, 0) (no mask); dh = M^T dz = (2, -4, 4); dx = relu(dh) = (2, 0, 4)
    with _modified_relus(model, "deconvnet"):
        g = input_gradient(model, x, 0)
    assert torch.allclose(g[0, :, 0, 0], torch.tensor([2.0, 0.0, 4.0]))
    # guided: dz = relu(u) * [z > 0] = (0, 0): nothing passes
    assert torch.allclose(deconvnet(model, x, 0)[0], torch.full((2, 2), 4.0))
    assert torch.allclose(guided_backprop(model, x, 0)[0], torch.zeros(2, 2))
    assert F.relu is torch.nn.functional.relu and not model.net.relu._forward_hooks  # patches undone
    with pytest.raises(ValueError, match="unknown ReLU rule"):
        with _modified_relus(model, "deconv"):
            pass


class LinearOnFeatures(nn.Module):
    """A = x[:, :2] (layer ``feat``); logit = sum(v * A): d logit / d A = v, exactly."""

    def __init__(self, v: torch.Tensor):
        super().__init__()
        self.feat = nn.Identity()
        self.v = v

    def forward(self, x):
        return (self.feat(x[:, :2]) * self.v).flatten(1).sum(1, keepdim=True)


def test_grad_cam_pp_closed_form_and_where_it_differs_from_grad_cam():
    from atlas.tools.attribution import grad_cam_pp

    v = torch.tensor([[[1.0, -1.0], [-1.0, -1.0]], [[0.5, 0.5], [0.5, 0.5]]])[None]
    model = load_model(LinearOnFeatures(v), input_size=2)
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # A0, sum 10
    x[0, 1] = 0.5  # A1, sum 2
    # channel 0: only (0, 0) has g > 0: alpha = 1 / (2 + 10 * 1) = 1/12, w0 = 1/12
    # channel 1: alpha = .25 / (2 * .25 + 2 * .125) = 1/3 at each of 4 cells, w1 = 4 * 1/3 * .5 = 2/3
    expected = F.relu(x[0, 0] / 12 + 2 / 3 * x[0, 1])
    assert torch.allclose(grad_cam_pp(model, x, 0, layer="feat")[0], expected, atol=1e-6)
    # Grad-CAM's mean gradient of channel 0 is -1/2: relu(-A0/2 + A1/2) = 0 everywhere, the
    # positive evidence at (0, 0) is cancelled; Grad-CAM++ keeps it
    assert torch.allclose(grad_cam(model, x, 0, layer="feat")[0], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="spatial layer"):
        grad_cam_pp(load_model(GapNet(), input_size=8), torch.rand(1, 3, 8, 8), 0, layer="fc")


class GapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_cam_mean_plus_bias_is_the_logit_on_a_tiny_gap_linear_model():
    from atlas.tools.attribution import cam, find_gap_linear_head

    torch.manual_seed(0)
    model = load_model(GapNet(), input_size=8)
    head = find_gap_linear_head(model)
    assert (head.layer, head.linear) == ("features", "fc")
    x = torch.rand(3, 3, 8, 8)
    logits = model(x)
    for k in range(5):
        c = cam(model, x, k, upsample=False)
        assert c.shape == (3, 8, 8)
        assert torch.allclose(c.mean((1, 2)) + model.net.fc.bias[k], logits[:, k], atol=1e-5)
    assert cam(model, x, 2).shape == (3, 8, 8)

    class FlatNet(nn.Module):  # a linear classifier over every position: no global pooling
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 8 * 8, 4)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    with pytest.raises(ValueError, match="global average.*grad_cam"):
        cam(load_model(FlatNet(), input_size=8), x, 0)
    with pytest.raises(ValueError, match="linear layer.*grad_cam"):
        cam(load_model(Quadratic(), input_size=8), x, 0)


class RegionSum(nn.Module):
    """logit_0 = sum of channel 0 over the top-left 4x4 block; logit_1 = 0."""

    def forward(self, x):
        s = x[:, 0, :4, :4].sum((1, 2))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_occlusion_is_the_mean_drop_of_the_covering_patches():
    from atlas.tools.attribution import occlusion

    model = load_model(RegionSum(), input_size=8)
    x = torch.ones(1, 3, 8, 8)
    got = occlusion(model, x, 0, patch=4, stride=2, fill=0.5, batch_size=4)
    # a patch at (y0, x0) lowers the logit by 0.5 per pixel it covers in the block
    heat, count = np.zeros((8, 8)), np.zeros((8, 8))
    for y0 in (0, 2, 4):
        for x0 in (0, 2, 4):
            overlap = max(0, 4 - y0) * max(0, 4 - x0)
            heat[y0:y0 + 4, x0:x0 + 4] += 0.5 * overlap
            count[y0:y0 + 4, x0:x0 + 4] += 1
    assert np.allclose(got[0].numpy(), heat / count, atol=1e-6)
    assert float(got[0, 0, 0]) == 8.0 and float(got[0, 7, 7]) == 0.0  # one patch each: all 16 / none
    # a stride that does not tile still covers the border (last patch at 8 - 4 = 4)
    edge = occlusion(model, x, 0, patch=4, stride=3, fill=(0.5, 0.5, 0.5))
    assert torch.isfinite(edge).all() and float(edge[0, 7, 7]) == 0.0 and float(edge[0, 0, 0]) == 8.0
    with pytest.raises(ValueError, match="patch 9 must be between 1 and the image side 8"):
        occlusion(model, x, 0, patch=9)
    with pytest.raises(ValueError, match="fill must be one value or 3"):
        occlusion(model, x, 0, patch=4, fill=(0.5, 0.5))


class LeftContrast(nn.Module):
    """Class 0 rises with the contrast (mean square) of the left half only."""

    def forward(self, x):
        left = (x[:, :, :, :4] ** 2).mean((1, 2, 3))
        return torch.stack([10 * left, torch.full_like(left, 5.0)], 1)


def test_igos_mask_deletes_the_region_the_class_depends_on():
    from atlas.tools.attribution import igos

    model = load_model(LeftContrast(), input_size=8)
    x = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float().expand(1, 3, 8, 8).clone()
    r = igos(model, x, 0, size=4, iterations=8, ig_steps=4, blur_sigma=1.0, l1=0.05, tv=0.05, noise=0.0)
    assert r.map.shape == (1, 8, 8) and r.mask.shape == (1, 4, 4) and len(r.losses) == 9
    losses = [row[0] for row in r.losses]
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))  # the line search only accepts descent
    assert losses[-1] < losses[0] - 0.1
    # mask columns 0, 1 sit over image columns 0..2.3 (left), column 3 over column 7 (right)
    assert float(r.mask[0, :, :2].max()) < 0.1 and float(r.mask[0, :, 3].min()) > 0.8, r.mask
    c = deletion_insertion(model, x, r.map, 0, steps=8, blur_sigma=1.0)
    flipped = deletion_insertion(model, x, r.map.flip(-1), 0, steps=8, blur_sigma=1.0)
    assert c.deletion_auc[0] < flipped.deletion_auc[0] and c.insertion_auc[0] > flipped.insertion_auc[0]
    with pytest.raises(ValueError, match="iterations"):
        igos(model, x, 0, iterations=0)


# ---- the new methods on the real InceptionV1 --------------------------------------------------


@pytest.fixture(scope="module")
def snorkel(inceptionv1, sample_dir):
    from atlas.tools.explain import load_photo

    return load_photo(sample_dir / "n04251144_snorkel.JPEG", inceptionv1)


@pytest.mark.shared
def test_cam_identity_on_the_real_inceptionv1(inceptionv1, snorkel, one_thread):
    from atlas.tools.attribution import cam, find_gap_linear_head

    head = find_gap_linear_head(inceptionv1)
    assert head.layer == "inception5b" and head.linear == "fc" and head.weight.shape == (1000, 1024)
    with torch.no_grad():
        logits = inceptionv1(snorkel)[0]
    for k in (801, 0, int(logits.argmin())):  # snorkel, tench, the least likely class
        c = cam(inceptionv1, snorkel, k, upsample=False)
        assert c.shape == (1, 7, 7)
        assert abs(float(c.mean() + head.bias[k]) - float(logits[k])) < 1e-3 * max(1.0, abs(float(logits[k])))


@pytest.mark.shared
@pytest.mark.parametrize("method", ["deconvnet", "grad_cam_pp", "cam", "occlusion", "igos"])
def test_new_methods_find_the_snorkel_on_a_real_photo(inceptionv1, snorkel, method, one_thread):
    """Keeping the top fifth of a map's pixels (the rest blurred) keeps more of p(snorkel) than
    keeping its bottom fifth (both small: a fifth of a photo rarely convinces the model)."""
    from atlas.tools.attribution import _gaussian_blur, deconvnet, grad_cam_pp, igos, occlusion
    from atlas.tools.attribution import cam as cam_fn

    fns = {"deconvnet": deconvnet, "grad_cam_pp": grad_cam_pp, "cam": cam_fn,
           "occlusion": lambda m, x, t: occlusion(m, x, t, patch=32, stride=32),
           "igos": lambda m, x, t: igos(m, x, t, iterations=3, ig_steps=3, generator=torch.Generator().manual_seed(0)).map}
    amap = fns[method](inceptionv1, snorkel, 801)
    assert amap.shape == (1, 224, 224) and torch.isfinite(amap).all()
    blurred = _gaussian_blur(snorkel, 10.0)
    order = amap.flatten().argsort(descending=True)
    k = order.numel() // 5
    probs = []
    for keep in (order[:k], order[-k:]):
        mask = torch.zeros(224 * 224)
        mask[keep] = 1.0
        mask = mask.view(1, 1, 224, 224)
        with torch.no_grad():
            probs.append(float(inceptionv1(snorkel * mask + blurred * (1 - mask)).softmax(1)[0, 801]))
    assert probs[0] > 10 * probs[1], probs  # a map unrelated to the object gives a ratio near 1


def test_last_spatial_layer_is_the_last_convolutional_layer():
    """Grad-CAM's default layer (Selvaraju et al.: the last convolutional layer), found from the model."""
    from atlas.tools.attribution import last_spatial_layer

    class Stack(nn.Module):  # conv -> relu -> conv -> relu -> global pool -> linear
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
            self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            return self.fc(self.pool(self.block(F.relu(self.conv1(x)))).flatten(1))

    model = load_model(Stack(), input_size=8)
    # the block finishes after its ReLU; the pool's 1x1 output is not spatial
    assert last_spatial_layer(model) == "block"
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(grad_cam(model, x, 1), grad_cam(model, x, 1, layer="block"))

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ValueError, match="no spatial.*layer="):
        last_spatial_layer(load_model(Flat(), input_size=8))


@pytest.mark.parametrize("arch, layer", [("resnet18", "layer4"), ("googlenet", "inception5b")])
def test_last_spatial_layer_of_torchvision_models(arch, layer):
    from atlas.tools.attribution import last_spatial_layer

    assert last_spatial_layer(load_model(f"torchvision:{arch}", random_init=True)) == layer
