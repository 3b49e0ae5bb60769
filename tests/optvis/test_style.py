"""Style transfer (Gatys, Ecker, Bethge 2016) as optvis objectives: Gram matrices against NumPy,
zero losses at the targets, the combined loss falling; one real-photo run on InceptionV1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas import optvis
from atlas.cli import main
from atlas.models import load_model
from atlas.optvis.neural_style import content, gram_matrix, layer_activations, style, style_targets, style_transfer
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny():
    return load_model(Tiny(), input_size=16)


def images(seed: int, size: tuple[int, int] = (24, 28)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(1, 3, 6, 7, generator=g), size=size, mode="bilinear")


def test_gram_matrix_equals_a_numpy_reference(rng):
    a = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
    ref = np.stack([f.reshape(5, 12) @ f.reshape(5, 12).T / 12 for f in a])
    np.testing.assert_allclose(gram_matrix(torch.from_numpy(a)).numpy(), ref, rtol=1e-5, atol=1e-6)
    g = gram_matrix(torch.from_numpy(a))
    torch.testing.assert_close(g, g.transpose(1, 2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gram_matrix(torch.zeros(2, 5))


def test_content_and_style_values_by_hand():
    t = torch.tensor([[[[1.0, 2.0]], [[0.0, 2.0]]]])  # (1, C=2, 1, 2): ||t||^2 = 9
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 2.0]]], [[[1.0, 2.0]], [[3.0, 2.0]]]])  # image 1: +3 in one entry
    c = content("L", t)
    torch.testing.assert_close(c({"L": x}), torch.tensor([0.0, -1.0]))  # -(3^2) / 9
    gt = gram_matrix(t)  # [[2.5, 2], [2, 2]]: ||G||^2 = 18.25
    s = style({"L": gt, "M": gt}, weights={"L": 1.0, "M": 0.5})
    g1 = gram_matrix(x[1:])  # diff^2 = 0 + 2.25 + 2.25 + 20.25 = 24.75
    torch.testing.assert_close(g1, torch.tensor([[[2.5, 3.5], [3.5, 6.5]]]))
    torch.testing.assert_close(gt, torch.tensor([[[2.5, 2.0], [2.0, 2.0]]]))
    expect = -(1.5 * 24.75 / 18.25)
    torch.testing.assert_close(s({"L": x, "M": x}), torch.tensor([0.0, expect]))
    assert str(c + 10 * s) == "content(L) + 10 * style(L, M)" and (c + 10 * s).layers == ("L", "M")
    with pytest.raises(ValueError, match="content photo's size"):
        c({"L": torch.zeros(1, 2, 3, 3)})
    with pytest.raises(ValueError, match="at least one layer"):
        style({})


def test_losses_are_zero_when_the_image_is_the_target(tiny):
    img = images(1)
    layers = ["relu", "relu2"]
    with torch.no_grad():
        s = optvis.evaluate(tiny, style(style_targets(tiny, img, layers)), img)
        c = optvis.evaluate(tiny, content("relu2", layer_activations(tiny, img, ["relu2"])["relu2"]), img)
        other = optvis.evaluate(tiny, style(style_targets(tiny, img, layers)), images(2))
    assert abs(float(s)) < 1e-10 and abs(float(c)) < 1e-10
    assert float(other) < -1e-3  # another image does have a style loss
    # Gram matrices do not depend on the image size: the same texture at another size has the same style
    tile = images(3, (12, 14))
    big = tile.repeat(1, 1, 2, 2)
    ga, gb = style_targets(tiny, tile, ["relu"])["relu"], style_targets(tiny, big, ["relu"])["relu"]
    assert float((ga - gb).norm() / gb.norm()) < 0.2


@pytest.mark.parametrize("param,init", [("fft", "content"), ("pixel", "noise")])
def test_the_combined_loss_decreases(tiny, param, init, tmp_path):
    r = style_transfer(tiny, images(1), images(2), content_layer="relu2", style_layers=["relu", "relu2"],
                       size=None, steps=30, lr=0.05, param=param, init=init, device="cpu", out=tmp_path / "s.png")
    assert r.image.shape == (1, 3, 24, 28) and Image.open(tmp_path / "s.png").size == (28, 24)
    start = r.start_content_loss + 10 * r.start_style_loss
    end = r.content_loss + 10 * r.style_loss
    assert end < 0.5 * start, (start, end)
    assert r.style_loss < r.start_style_loss
    assert float(r.history[-3:].mean()) > float(r.history[:3].mean())  # the objective (-loss) rises
    if init == "content":
        assert r.start_content_loss < 1e-3  # starts at the content photo (up to clamping)


def test_style_transfer_checks_its_arguments(tiny):
    with pytest.raises(ValueError, match="'fft' or 'pixel'"):
        style_transfer(tiny, images(1), images(2), content_layer="relu2", style_layers=["relu"], param="dct")
    with pytest.raises(ValueError, match="'content' or 'noise'"):
        style_transfer(tiny, images(1), images(2), content_layer="relu2", style_layers=["relu"], init="gray")
    with pytest.raises(ValueError, match="at least one style layer"):
        style_transfer(tiny, images(1), images(2), content_layer="relu2", style_layers=[])
    with pytest.raises(ValueError, match="Did you mean"):
        style_transfer(tiny, images(1), images(2), content_layer="relu2", style_layers=["relu3"], steps=1)


def test_cli_style(tmp_path, capsys):
    for name, seed in (("c.png", 0), ("s.png", 1)):
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    rc = main(["--quiet", "style", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(tmp_path / "o.png"),
               "--random-init", "--device", "cpu", "--content-layer", "inception3a", "--style-layers",
               "conv3_relu,inception3a", "--steps", "3"])
    assert rc == 0 and Image.open(tmp_path / "o.png").size == (48, 40)
    assert "style loss" in capsys.readouterr().out


@pytest.mark.shared
def test_real_style_transfer_moves_toward_the_style(inceptionv1, sample_paths):
    content_photo = sample_paths[975]  # lakeside
    style_photo = next(p for p in sample_paths if "honeycomb" in p.name)
    r = style_transfer(inceptionv1, content_photo, style_photo, size=96, steps=25, device="cpu",
                       style_layers=("inception3a", "inception4a"))
    assert r.style_loss < 0.5 * r.start_style_loss, (r.start_style_loss, r.style_loss)
    assert r.content_loss < 1.0  # still closer to the content than an unrelated image (relative error 1)
