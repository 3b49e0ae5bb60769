"""MACO (Fel et al., NeurIPS 2023): fixed natural Fourier magnitude, optimized phase.

Checks: the magnitude computed from photos against a NumPy reference; resampling matches bins
by frequency; the parameterization keeps its magnitude whatever the phase does (the point of
MACO); seeds, batches and ``init``; the packaged spectrum; rendering raises an objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas import optvis
from atlas.models import load_model
from atlas.optvis.color import color_correlation_normalized
from atlas.optvis.param import MacoImage, maco_image, make_image
from atlas.optvis.spectrum import SPECTRUM_SIZE, compute_magnitude, main, natural_magnitude, resample_magnitude
from tinynet import Tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def _photos(tmp_path, n=3, size=24):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = (rng.random((size, size + 6, 3)) * 255).astype(np.uint8)  # landscape: center crop to size
        p = tmp_path / f"p{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def test_compute_magnitude_matches_a_numpy_reference(tmp_path):
    paths = _photos(tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    got = compute_magnitude(paths + [tmp_path / "broken.jpg"], size=24)
    inv = np.linalg.inv(color_correlation_normalized().numpy())
    hann = np.hanning(24)
    acc = np.zeros((3, 24, 13))
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), np.float32)[:, 3:27] / 255.0  # center crop of 30 -> 24
        t = np.einsum("ij,hwj->ihw", inv, x)
        t = (t - t.mean(axis=(1, 2), keepdims=True)) * (hann[:, None] * hann[None, :])
        acc += np.abs(np.fft.rfft2(t, norm="ortho"))
    np.testing.assert_allclose(got, acc / len(paths), rtol=1e-4, atol=1e-5)
    assert got.shape == (3, 24, 13)
    with pytest.raises(ValueError, match="no readable photo"):
        compute_magnitude([tmp_path / "broken.jpg"], size=24)


def test_resample_magnitude_matches_bins_by_frequency():
    # a magnitude that is a known function of (cycles per image) resamples to the same function
    h, w = 32, 32
    fy = np.fft.fftfreq(h) * h
    fx = np.fft.rfftfreq(w) * w
    f = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    mag = np.stack([1.0 / np.maximum(f, 1.0)] * 3).astype(np.float32)
    small = resample_magnitude(mag, 16).numpy()
    fy16, fx16 = np.fft.fftfreq(16) * 16, np.fft.rfftfreq(16) * 16
    want = 1.0 / np.maximum(np.sqrt(fy16[:, None] ** 2 + fx16[None, :] ** 2), 1.0)
    assert small.shape == (3, 16, 9)
    np.testing.assert_allclose(small[0], want, rtol=1e-5)
    np.testing.assert_array_equal(resample_magnitude(mag, 32).numpy(), mag)
    with pytest.raises(ValueError, match="3, H, W // 2"):
        resample_magnitude(mag[0], 16)


def test_packaged_spectrum_is_natural():
    m = natural_magnitude(SPECTRUM_SIZE).numpy()
    assert m.shape == (3, SPECTRUM_SIZE, SPECTRUM_SIZE // 2 + 1) and np.isfinite(m).all()
    # natural photos: power falls with frequency, roughly 1/f in amplitude
    f = np.sqrt((np.fft.fftfreq(SPECTRUM_SIZE)[:, None] * SPECTRUM_SIZE) ** 2
                + (np.fft.rfftfreq(SPECTRUM_SIZE)[None, :] * SPECTRUM_SIZE) ** 2)
    low = m[0][(f >= 2) & (f < 4)].mean()
    high = m[0][(f >= 32) & (f < 64)].mean()
    assert 5 < low / high < 100
    assert natural_magnitude(64).shape == (3, 64, 33)


def test_maco_keeps_the_magnitude_whatever_the_phase(tiny_model):
    g = torch.Generator().manual_seed(0)
    p = maco_image(32, 2, generator=g)
    assert isinstance(p, MacoImage) and [n for n, _ in p.named_parameters()] == ["phase"]
    x = p()
    assert x.shape == (2, 3, 32, 32) and 0 < x.min() and x.max() < 1
    # a few optimizer steps on an objective change the picture but not its spectrum's magnitude
    before = x.detach().clone()
    r = optvis.render_vis(tiny_model, optvis.channel("relu2", 1), p, [], steps=5, lr=0.5, generator=g)
    assert (r.images - before).abs().max() > 0.05

    def magnitude(images):
        t = torch.logit(images.clamp(1e-6, 1 - 1e-6))
        t = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(color_correlation_normalized()), t)
        # interior columns: the DC and Nyquist columns of a real FFT are Hermitian-symmetrized by irfft2
        return torch.fft.rfft2(t, norm="ortho").abs()[..., 1:, 1:-1]

    a, b = magnitude(before), magnitude(r.images)
    ratio = (a / a.mean(dim=(2, 3), keepdim=True)) / (b / b.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=2e-3, rtol=0)


def test_maco_seeds_batches_and_init():
    a = maco_image(16, 2, generator=[torch.Generator().manual_seed(s) for s in (0, 1)])()
    b = maco_image(16, 1, generator=torch.Generator().manual_seed(1))()
    torch.testing.assert_close(a[1:], b)  # image b depends on generator b only
    assert (a[0] - a[1]).abs().max() > 0.05
    photo = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    p = maco_image(16, init=photo)
    want = torch.angle(torch.fft.rfft2(p._from_rgb(photo), norm="ortho"))
    torch.testing.assert_close(p.phase.detach(), want)
    with pytest.raises(ValueError, match="choose one of fft, pixel, maco"):
        make_image("dct", 16)
    assert isinstance(make_image("maco", 16, generator=torch.Generator()), MacoImage)


def test_spectrum_command_writes_a_file(tmp_path):
    _photos(tmp_path / "photos", n=2, size=20) if (tmp_path / "photos").mkdir() is None else None
    out = tmp_path / "spec.npy"
    assert main([str(tmp_path / "photos"), "-o", str(out), "--size", "16"]) == 0
    m = np.load(out)
    assert m.dtype == np.float16 and m.shape == (3, 16, 9)
    torch.testing.assert_close(natural_magnitude(16, m.astype(np.float32)), torch.from_numpy(m.astype(np.float32)))


@pytest.fixture
def tiny_model():
    return load_model(Tiny(), input_size=16)


def test_visualize_sees_the_model_input_size_and_takes_maco(tmp_path):
    model = load_model(Tiny(), input_size=24)
    seen = []
    h = model.net.conv.register_forward_pre_hook(lambda _m, inp: seen.append(tuple(inp[0].shape[2:])))
    try:
        r = optvis.visualize(model, "relu2:1", tmp_path / "m.png", size=16, steps=3, param="maco",
                             device="cpu", progress=False)
        assert set(seen) == {(24, 24)} and r.images.shape == (1, 3, 16, 16)
        seen.clear()
        optvis.visualize(model, "relu2:1", tmp_path / "f.png", size=16, steps=2, input_size=0, device="cpu",
                         progress=False)
        assert (16, 16) in seen and (24, 24) not in seen  # 0: as rendered (the final measure, untransformed)
    finally:
        h.remove()
