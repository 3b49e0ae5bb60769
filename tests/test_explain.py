"""`atlas explain`: one photo's attribution maps and figure; bad input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from atlas.explain import explain_figure, explain_photo, layer_position_attribution
from atlas.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("inceptionv1", random_init=True)


@pytest.fixture
def photo(tmp_path):
    p = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(p)
    return p


def test_explain_photo_and_figure(model, photo, tmp_path):
    e = explain_photo(model, photo, target="snorkel", ig_steps=4)
    assert e.target == 801 and e.target_name == "snorkel"
    assert set(e.maps) == {"saliency", "guided_backprop", "grad_cam", "integrated_gradients"}
    assert all(m.shape == (224, 224) for m in e.maps.values())
    assert e.layer_attribution.shape == (14, 14) and e.layer_activations.shape == (196, 512)
    out = explain_figure(e, tmp_path / "fig.png", model.class_names)
    with Image.open(out) as im:
        assert im.size[0] > 1000


def test_layer_attribution_sums_like_the_gradient_times_input(model, photo):
    """sum over positions of h . dlogit/dh equals the full-layer gradient x input."""
    import torch

    from atlas.explain import load_photo

    x = load_photo(photo, model)
    a, vecs = layer_position_attribution(model, x, 3, "inception4c")
    with torch.enable_grad():
        from atlas.models import capture

        with capture(model, ["inception4c"]) as acts:
            logit = model(x.clone().requires_grad_(True))[0, 3]
            h = acts["inception4c"]
            (g,) = torch.autograd.grad(logit, h)
    assert np.isclose(a.sum(), float((h * g).sum().detach()), rtol=1e-4, atol=1e-5)
    assert np.allclose(vecs[15], h[0, :, 1, 1].detach().numpy())  # position (1, 1) = row 15 of 14x14


def test_bad_inputs(model, photo, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ValueError, match="cannot be used"):
        explain_photo(model, text)
    with pytest.raises(ValueError, match="does not exist"):
        explain_photo(model, tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="Did you mean"):
        explain_photo(model, photo, target="snorkl")
    with pytest.raises(ValueError, match="not spatial"):
        explain_photo(model, photo, layer="fc", methods=("saliency",))
    with pytest.raises(ValueError, match="Did you mean"):
        explain_photo(model, photo, layer="inception4x")


def test_cli_explain(photo, tmp_path):
    out = tmp_path / "e.png"
    r = subprocess.run([sys.executable, "-m", "atlas", "explain", str(photo), "--random-init", "--ig-steps", "2",
                        "--methods", "saliency,integrated_gradients", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists() and "completeness error" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "atlas", "explain", str(photo), "--random-init", "--class", "wokk"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Did you mean" in bad.stderr and "wok" in bad.stderr


def test_cli_evaluate_prints_auc_table(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    r = subprocess.run([sys.executable, "-m", "atlas", "-q", "explain", str(photos), "--evaluate", "--random-init",
                        "--ig-steps", "2", "--curve-steps", "2", "--methods", "saliency,grad_cam"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| saliency |" in r.stdout and "| grad_cam |" in r.stdout and "| random |" in r.stdout
    assert r.stdout.startswith("2 photos")
