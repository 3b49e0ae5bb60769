"""Attribution maps against models whose gradients are known in closed form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atlas.attribution import (
    deletion_insertion,
    grad_cam,
    guided_backprop,
    input_gradient,
    integrated_gradients,
    saliency,
    smoothgrad,
)
from atlas.models import load_model


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
