"""Adversarial examples (FGSM, PGD): closed forms on a linear model, budgets kept, real flips."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from atlas.models import load_model
from atlas.tools.adversarial import attack_photos, fgsm, list_photos, perturbation_norm, pgd, run_adversarial

S = 8


@pytest.fixture(scope="module")
def linear():
    """logits = W x + b over the flattened (3, 8, 8) image; 4 classes."""
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, 4))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(4, 3 * S * S, generator=g))
        net[1].bias.zero_()
    return load_model(net, input_size=S, class_names=["a", "b", "c", "d"])


@pytest.fixture
def images(generator):
    return 0.25 + 0.5 * torch.rand(5, 3, S, S, generator=generator)  # away from 0 and 1: no clamping


def test_fgsm_on_a_two_class_linear_model_is_the_sign_of_the_weight_difference():
    """Two classes: d CE(t) / dx = -(1 - p_t) (w_t - w_o), so targeted FGSM adds eps * sign(w_t - w_o)."""
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * S * S, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(2, 3 * S * S, generator=g))
    model = load_model(net, input_size=S, class_names=["x", "y"])
    x = 0.3 + 0.4 * torch.rand(3, 3, S, S, generator=g)
    eps = 0.02
    w = net[1].weight.detach()
    for t in (0, 1):
        expected = x + eps * torch.sign(w[t] - w[1 - t]).view(1, 3, S, S)
        assert torch.allclose(fgsm(model, x, eps=eps, target=t), expected, atol=1e-7)
    # untargeted, away from class 0 = toward class 1
    assert torch.allclose(fgsm(model, x, eps=eps, label=0), fgsm(model, x, eps=eps, target=1), atol=1e-7)
    # l2: a step of norm eps along (w_t - w_o)
    d = (w[1] - w[0]).view(1, 3, S, S)
    expected = x + 0.5 * d / d.norm()
    assert torch.allclose(fgsm(model, x, eps=0.5, target=1, norm="l2"), expected, atol=1e-6)


def test_fgsm_multiclass_matches_the_softmax_weighted_closed_form(linear, images):
    """K classes: -d CE(t)/dx = w_t - sum_k p_k w_k."""
    w = linear.net[1].weight.detach()
    p = linear(images).softmax(1).detach()
    direction = w[2][None] - p @ w
    expected = images + 0.01 * torch.sign(direction).view(-1, 3, S, S)
    assert torch.allclose(fgsm(linear, images, eps=0.01, target=2), expected, atol=1e-7)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 3.0)])
def test_pgd_stays_inside_the_budget_and_the_pixel_range(linear, generator, norm, eps):
    x = torch.rand(6, 3, S, S, generator=generator)  # values near 0 and 1: clamping matters
    x[0] = 0.0
    x[1] = 1.0
    adv = pgd(linear, x, eps=eps, target=3, norm=norm, steps=20, step_size=eps, random_start=True,
              generator=generator, early_stop=False)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    size = perturbation_norm(adv - x, norm)
    assert (size <= eps * (1 + 1e-5)).all(), size
    assert (size > 0.5 * eps).any()  # it did move, up to the edge of the budget
    # and the attack worked on a linear model with that much room
    assert (linear(adv).argmax(1)[2:] == 3).all()


def test_pgd_beats_fgsm_and_early_stop_keeps_successes(linear, images):
    t = 1
    eps = 0.004
    one = fgsm(linear, images, eps=eps, target=t)
    many = pgd(linear, images, eps=eps, target=t, steps=20, early_stop=False)
    ce = nn.functional.cross_entropy
    target = torch.full((len(images),), t)
    assert ce(linear(many), target) <= ce(linear(one), target) + 1e-6
    stopped = pgd(linear, images, eps=0.2, target=t, steps=20)
    assert (linear(stopped).argmax(1) == t).all()


def test_bad_input(linear, images):
    with pytest.raises(ValueError, match="unknown norm"):
        pgd(linear, images, eps=0.1, target=1, norm="l1")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fgsm(linear, images * 300, eps=0.1, target=1)
    with pytest.raises(ValueError, match=">= 0"):
        fgsm(linear, images, eps=-1, target=1)


@pytest.fixture
def photo_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    return tmp_path


def test_attack_photos_reports_rates_and_smallest_budgets(linear, photo_dir, tmp_path):
    photos = list_photos([photo_dir])
    assert len(photos) == 3 and len(list_photos([photo_dir], limit=2)) == 2
    report = run_adversarial(linear, photos, tmp_path / "out", target="random", budgets=[1e-4, 0.05, 0.5],
                             steps=10, figures=1, progress=False)
    assert len(report.photos) == 3
    for p in report.photos:
        assert p.target != p.label
        # more budget never hurts much on a linear model; the largest flips every photo
        assert p.success[-1]
        assert p.smallest_eps == next(e for e, s in zip(p.budgets, p.success) if s)
        assert float((p.adversarial - p.image).abs().max()) <= p.shown_eps + 1e-6
    k, rate, lo, hi = report.rates()[-1]
    assert k == 3 and rate == 1.0 and lo < 1.0 == hi
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    assert doc["n_photos"] == 3 and len(doc["rates"]) == 3
    assert len(list((tmp_path / "out").glob("*-adv.png"))) == 1
    with pytest.raises(ValueError, match="0..255"):
        attack_photos(linear, photos, target=None, budgets=[4], progress=False)


def test_figure_places_both_images_on_a_tiny_atlas(tiny_run, photo_dir, tmp_path):
    model = load_model("inceptionv1", random_init=True)
    photos = list_photos([photo_dir], limit=1)
    report = run_adversarial(model, photos, tmp_path / "fig", target=None, budgets=[2 / 255], steps=2,
                             run_dir=tiny_run, figures=1, progress=False)
    figs = list((tmp_path / "fig").glob("*-adv.png"))
    assert len(figs) == 1
    with Image.open(figs[0]) as im:
        assert im.size[1] > 700  # the atlas row is there
    assert len(report.photos) == 1


@pytest.mark.usefixtures("one_thread")
def test_pgd_flips_a_real_photo_to_a_chosen_target_at_4_over_255(inceptionv1, sample_paths):
    from atlas.tools.explain import load_photo

    x = load_photo(sample_paths[1], inceptionv1)  # goldfish
    target = inceptionv1.class_names.index("toaster")
    assert int(inceptionv1(x).argmax()) != target
    adv = pgd(inceptionv1, x, eps=4 / 255, target=target, steps=10)
    assert int(inceptionv1(adv).argmax()) == target
    assert float((adv - x).abs().max()) <= 4 / 255 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_the_method_choices_are_the_librarys_methods():
    """The parser spells the choices out (importing the tool would load torch for every command)."""
    import argparse

    from atlas.cli import build_parser
    from atlas.tools.adversarial import METHODS

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    (option,) = [a for a in commands.choices["adversarial"]._actions if a.dest == "method"]
    assert tuple(option.choices) == METHODS


def test_cli_adversarial(photo_dir, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "atlas", "-q", "adversarial", str(photo_dir), "--random-init",
                        "--limit", "1", "--target", "toaster", "--eps", "8", "--steps", "2", "--figures", "1",
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "8/255 (linf)" in r.stdout and (out / "report.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "atlas", "adversarial", str(photo_dir), "--random-init",
                          "--target", "toastr"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean" in bad.stderr
