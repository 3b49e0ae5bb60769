"""Fooling images (Nguyen et al. 2015): noise optimized until the model is >= 99% sure."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from atlas.models import load_model
from atlas.optvis import LOGITS
from atlas.tools.fooling import class_log_prob, fooling_gallery, fooling_images, score_images


@pytest.fixture(scope="module")
def tiny():
    """Classes red, green, blue: logits = 20 (mean color - mean gray level); the only image
    with >= 99% "red" is a red one (pure red gives 1 / (1 + 2 e^-20))."""
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 3))
    with torch.no_grad():
        net[2].weight.copy_(20 * (torch.eye(3) - 1 / 3))
        net[2].bias.zero_()
    return load_model(net, input_size=32, class_names=["red", "green", "blue"])


def test_class_log_prob_is_the_log_softmax():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    v = class_log_prob(2)({LOGITS: logits})
    assert torch.allclose(v, torch.log(torch.softmax(logits, 1)[:, 2]))
    with pytest.raises(ValueError, match="out of range"):
        class_log_prob(7)({LOGITS: logits})


def test_score_images_rounds_and_resizes(tiny):
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    p = score_images(tiny, x)
    assert p.shape == (2, 3)
    big = torch.nn.functional.interpolate(x.mul(255).round().div(255), size=(32, 32), mode="bilinear",
                                          align_corners=False)
    assert torch.allclose(p, tiny(big).softmax(1), atol=1e-6)


@pytest.mark.parametrize("priors", [False, True])
def test_tiny_model_is_fooled_and_the_confidence_is_measured(tiny, priors, tmp_path):
    start = fooling_images(tiny, ["red", 2], priors=priors, steps=0)
    r = fooling_images(tiny, ["red", 2], priors=priors, steps=100, lr=0.1)
    assert r.classes == [0, 2] and r.images.shape == (2, 3, 32, 32)
    assert (start.confidence < 0.5).all()  # a gray start is a third of each
    # measured again here, from the returned 8-bit images
    p = tiny(r.images).softmax(1).detach()
    assert torch.allclose(torch.as_tensor(r.confidence), p[[0, 1], [0, 2]], atol=1e-5)
    assert (r.confidence >= 0.99).all(), r.describe()
    mean = r.images.mean((2, 3))
    assert mean[0, 0] > mean[0, 1:].max() + 0.3 and mean[1, 2] > mean[1, :2].max() + 0.3  # red, blue
    out = fooling_gallery([start, r], tmp_path / "g.png")
    with Image.open(out) as im:
        assert im.size[0] > 200


def test_bad_classes(tiny):
    with pytest.raises(ValueError, match="Did you mean"):
        fooling_images(tiny, ["rde"], steps=1)
    with pytest.raises(ValueError, match="at least one class"):
        fooling_images(tiny, [], steps=1)


@pytest.mark.usefixtures("one_thread")
def test_real_model_reaches_99_percent_without_priors(inceptionv1):
    """Raw pixels, no transforms: a 64 px image (resampled to 224 for the model) fools InceptionV1."""
    r = fooling_images(inceptionv1, ["goldfish"], priors=False, size=64, steps=24)
    assert r.confidence[0] >= 0.99, r.describe()
    assert r.top[0] == 1


@pytest.mark.usefixtures("one_thread")
def test_real_model_reaches_99_percent_with_the_priors(inceptionv1):
    """FFT parameterization + transforms: 64 steps on a 64 px image (about 15 s here)."""
    r = fooling_images(inceptionv1, ["goldfish"], priors=True, size=64, steps=64)
    assert r.confidence[0] >= 0.99, r.describe()
