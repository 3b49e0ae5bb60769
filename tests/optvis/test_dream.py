"""DeepDream (Mordvintsev, Olah, Tyka 2015): octave sizes, the objective rising, seeded jitter.

Fast tests run a tiny two-layer model on synthetic images; the ``shared`` one dreams a real
photo with the real InceptionV1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas import optvis
from atlas.cli import main
from atlas.models import load_model
from atlas.optvis.dream import deep_dream, dream, octave_sizes, read_image
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny():
    return load_model(Tiny(), input_size=16)


@pytest.fixture
def photo():
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(37, 53), mode="bilinear")
    return smooth.clamp(0.05, 0.95)


def test_octave_sizes_by_hand():
    assert octave_sizes((100, 140), 3, 2.0) == [(25, 35), (50, 70), (100, 140)]
    assert octave_sizes((375, 500), 4, 1.4) == [(137, 182), (191, 255), (268, 357), (375, 500)]
    assert octave_sizes((20, 30), 1, 1.4) == [(20, 30)]
    with pytest.raises(ValueError, match="fewer octaves"):
        octave_sizes((64, 64), 5, 2.0)  # 4 px at the smallest
    with pytest.raises(ValueError, match="octave_scale"):
        octave_sizes((64, 64), 2, 0.5)


def test_dream_raises_the_objective_at_every_octave_and_keeps_the_size(tiny, photo):
    seen = []
    # no jitter here: on a 37 px image the seam of a roll is a large part of what the tiny net sees
    r = deep_dream(tiny, photo, optvis.layer("relu2"), octaves=3, octave_scale=1.3, steps=6, jitter=0, lr=0.1,
                   callback=lambda o, img: seen.append((o, tuple(img.shape[2:]))))
    assert r.octave_sizes == octave_sizes((37, 53), 3, 1.3)
    assert seen == [(i, s) for i, s in enumerate(r.octave_sizes)]  # smallest first, each at its size
    assert r.image.shape == (1, 3, 37, 53) and 0 <= float(r.image.min()) and float(r.image.max()) <= 1
    for start, end in zip(r.start_values, r.end_values):
        assert end > 1.5 * start, (r.start_values, r.end_values)
    # the detail carries over: each octave starts above where the photo alone would be
    with torch.no_grad():
        plain = optvis.evaluate(tiny, optvis.layer("relu2"), photo).item()
    assert r.start_values[-1] > 1.1 * plain


@pytest.mark.parametrize("param", ["pixel", "decorrelated", "fft"])
def test_zero_steps_give_back_the_photo_and_a_channel_objective_rises(tiny, photo, param):
    r = deep_dream(tiny, photo, optvis.layer("relu2"), octaves=3, steps=0, param=param)
    torch.testing.assert_close(r.image, photo, atol=2e-3, rtol=0)  # parameterization round trip only
    c = deep_dream(tiny, photo, optvis.channel("relu2", 1), octaves=2, steps=5, jitter=0, lr=0.1, param=param)
    assert c.end_values[-1] > c.start_values[0]


def test_jitter_is_seeded_and_reproducible(tiny, photo):
    def run(seed: int, jitter: int = 4) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return deep_dream(tiny, photo, optvis.layer("relu2"), octaves=2, steps=4, jitter=jitter, generator=g).image

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3  # other rolls, another dream
    assert torch.equal(run(0, jitter=0), run(1, jitter=0))  # without jitter the seed has nothing to draw


def test_bad_input_says_what_to_fix(tiny, photo, tmp_path):
    with pytest.raises(ValueError, match="param must be one of"):
        deep_dream(tiny, photo, optvis.layer("relu2"), param="dct")
    with pytest.raises(ValueError, match="one RGB image"):
        deep_dream(tiny, photo.expand(2, -1, -1, -1), optvis.layer("relu2"))
    with pytest.raises(ValueError, match="does not exist"):
        dream(tiny, tmp_path / "nope.jpg", "relu2")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot be used"):
        dream(tiny, tmp_path / "bad.jpg", "relu2")
    with pytest.raises(ValueError, match="Did you mean"):
        dream(tiny, photo, "relu3")


def test_dream_of_a_file_writes_a_png_of_the_photos_size(tiny, photo, tmp_path):
    path = tmp_path / "p.png"
    optvis.save_png(photo, path)
    assert read_image(path).shape == (1, 3, 37, 53)
    assert read_image(path, max_side=20).shape == (1, 3, 14, 20)
    r = dream(tiny, path, "relu2", channel=2, out=tmp_path / "d.png", octaves=2, steps=3, jitter=2, device="cpu")
    assert Image.open(tmp_path / "d.png").size == (53, 37) and r.image.shape == (1, 3, 37, 53)


def test_cli_dream(tmp_path, capsys):
    path = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    rc = main(["--quiet", "dream", str(path), "--random-init", "--device", "cpu", "--layer", "inception3a",
               "--octaves", "2",
               "--steps", "2", "--jitter", "4", "-o", str(tmp_path / "out.png")])
    assert rc == 0 and Image.open(tmp_path / "out.png").size == (48, 40)
    assert "octaves 29x34, 40x48" in capsys.readouterr().out
    assert main(["--quiet", "dream", str(path), "--random-init", "--device", "cpu", "--octaves", "9"]) == 2


@pytest.mark.shared
def test_real_photo_dream_amplifies_inception4c(inceptionv1, sample_paths):
    r = dream(inceptionv1, sample_paths[970], "inception4c", max_side=160, octaves=3, steps=6, device="cpu")
    assert r.image.shape[-2:] == (120, 160)  # the alp photo is 500 x 375
    assert all(e > 1.5 * s for s, e in zip(r.start_values, r.end_values)), (r.start_values, r.end_values)
    assert float((r.image - read_image(sample_paths[970], 160)).abs().mean()) > 0.01  # visibly changed
