"""Image parameterizations for feature visualization.

The contract, the one every optimizer loop here relies on: a parameterization is an
``nn.Module`` whose ``forward()`` takes no input and returns a batch of RGB images in [0, 1],
shape (B, 3, H, W), differentiable with respect to ``parameters()``. It has the attributes
``batch`` (B) and ``size`` ((H, W)). Nothing else is assumed, so a user's own module that keeps
this contract works with :func:`atlas.optvis.render_vis`.

Two parameterizations follow Lucid (``lucid.optvis.param``; Olah et al., "Feature
Visualization", Distill 2017, section "Preconditioning and Parameterization"):

- :func:`fft_image`: the image's 2-D Fourier spectrum scaled by 1/frequency (Lucid's
  ``fft_image`` with ``decay_power=1``), so all frequencies get gradients of comparable size,
  then decorrelated color (Lucid's ``_linear_decorelate_color``) and a sigmoid
  (Lucid's ``to_valid_rgb(..., decorrelate=True, sigmoid=True)``). This is the default.
- :func:`pixel_image`: one free value per pixel and channel (Lucid's ``naive``), with the same
  color decorrelation and sigmoid.

A third follows Fel et al., "Unlocking Feature Visualization for Deeper Networks with MAgnitude
Constrained Optimization" (MACO, NeurIPS 2023):

- :func:`maco_image`: only the *phase* of the spectrum is optimized; its magnitude is fixed to
  the mean magnitude of natural photos (:mod:`atlas.optvis.spectrum`). The image is standardized,
  then recorrelated in color and squashed by the same sigmoid.

Both draw their random initial values from an explicit ``torch.Generator`` on the CPU (then
move them to ``device``), so a seed gives the same start on every device. Passing a sequence
of B generators makes image b depend on generator b only: a batch of images is then the same
as the images rendered one at a time with those generators.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from atlas.optvis.color import color_correlation_normalized

__all__ = [
    "FFTImage",
    "ImageParam",
    "MacoImage",
    "PARAMETERIZATIONS",
    "PixelImage",
    "fft_image",
    "make_image",
    "maco_image",
    "pixel_image",
]

Generators = torch.Generator | Sequence[torch.Generator]


def _as_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}; pass e.g. size=128 or size=(128, 96)")
    return h, w


def per_item_generators(generator: Generators | None, batch: int) -> list[torch.Generator]:
    """One generator per batch item: a single generator is shared (drawn from in item order)."""
    if generator is None:
        raise ValueError("pass an explicit generator, e.g. generator=torch.Generator().manual_seed(0)")
    if isinstance(generator, torch.Generator):
        return [generator] * batch
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} generators for a batch of {batch}; pass one generator or exactly {batch}")
    return gens


def _randn(shape: tuple[int, ...], gens: list[torch.Generator], sd: float) -> torch.Tensor:
    """(B, *shape) normal values with standard deviation ``sd``; item b drawn from ``gens[b]``."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]) * sd


class ImageParam(nn.Module):
    """Base of the parameterizations: ``forward() -> (B, 3, H, W)`` in [0, 1]."""

    batch: int
    size: tuple[int, int]

    def __init__(self, batch: int, size: tuple[int, int], decorrelate: bool):
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.batch, self.size, self.decorrelate = batch, size, decorrelate
        self.register_buffer("color", color_correlation_normalized(), persistent=False)

    def _to_rgb(self, t: torch.Tensor) -> torch.Tensor:
        """Lucid's ``to_valid_rgb``: decorrelated color (optional), then a sigmoid."""
        if self.decorrelate:
            t = torch.einsum("ij,bjhw->bihw", self.color, t)
        return torch.sigmoid(t)

    def _from_rgb(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`_to_rgb` (images are clamped away from 0 and 1 first)."""
        t = torch.logit(images.clamp(1e-3, 1 - 1e-3))
        if self.decorrelate:
            t = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(self.color), t)
        return t

    def _check_init(self, init: torch.Tensor) -> torch.Tensor:
        if init.dim() == 3:
            init = init.unsqueeze(0)
        if init.dim() != 4 or init.shape[1] != 3:
            raise ValueError(f"init must be RGB images (B, 3, H, W) in [0, 1], got shape {tuple(init.shape)}")
        if tuple(init.shape[2:]) != self.size:
            raise ValueError(f"init images are {tuple(init.shape[2:])} but the parameterization is {self.size}; "
                             "resize them first")
        if init.shape[0] == 1 and self.batch > 1:
            init = init.expand(self.batch, -1, -1, -1)
        if init.shape[0] != self.batch:
            raise ValueError(f"init has {init.shape[0]} images for a batch of {self.batch}")
        return init.detach().float()

    def extra_repr(self) -> str:
        return f"batch={self.batch}, size={self.size}, decorrelate={self.decorrelate}"


class PixelImage(ImageParam):
    """One free value per pixel (Lucid ``naive`` + ``to_valid_rgb``); see :func:`pixel_image`."""

    def __init__(
        self,
        size: int | tuple[int, int],
        batch: int = 1,
        *,
        sd: float = 0.01,
        decorrelate: bool = True,
        generator: Generators | None = None,
        device: str | torch.device = "cpu",
        init: torch.Tensor | None = None,
    ):
        super().__init__(batch, _as_size(size), decorrelate)
        h, w = self.size
        if init is not None:
            values = self._from_rgb(self._check_init(init).to(self.color.device))
        else:
            values = _randn((3, h, w), per_item_generators(generator, batch), sd)
        self.pixels = nn.Parameter(values.to(device))
        self.to(device)

    def forward(self) -> torch.Tensor:
        return self._to_rgb(self.pixels)


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Frequency magnitude of each bin of a real 2-D FFT of an (h, w) image, shape (h, w // 2 + 1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FFTImage(ImageParam):
    """Spectrum scaled by 1/frequency**decay_power, decorrelated color, sigmoid; see :func:`fft_image`."""

    def __init__(
        self,
        size: int | tuple[int, int],
        batch: int = 1,
        *,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        generator: Generators | None = None,
        device: str | torch.device = "cpu",
        init: torch.Tensor | None = None,
    ):
        super().__init__(batch, _as_size(size), decorrelate)
        h, w = self.size
        self.decay_power = decay_power
        freqs = rfft2d_freqs(h, w)
        # Lucid: scale = 1 / max(freq, 1 / max(w, h)) ** decay_power; the orthonormal inverse FFT
        # below equals Lucid's ``irfft2d(scale * sqrt(w * h) * spectrum)``.
        scale = 1.0 / np.maximum(freqs, 1.0 / max(w, h)) ** decay_power
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)), persistent=False)
        if init is not None:
            t = self._from_rgb(self._check_init(init).to(self.color.device))
            spectrum = torch.fft.rfftn(t * 4.0, dim=(-2, -1), norm="ortho") / self.scale
            values = torch.view_as_real(spectrum).contiguous()
        else:
            values = _randn((3, h, w // 2 + 1, 2), per_item_generators(generator, batch), sd)
        self.spectrum = nn.Parameter(values.to(device))
        self.to(device)

    def forward(self) -> torch.Tensor:
        return self.image(self.spectrum)

    def image(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The images (B, 3, H, W) in (0, 1) of a batch of raw spectra shaped like
        :attr:`spectrum`, (B, 3, H, W // 2 + 1, 2): this parameterization's scaling, colour
        decorrelation and sigmoid (also for spectra predicted elsewhere, e.g. by
        :class:`atlas.stages.render.amortised.DirectionImages`)."""
        h, w = self.size
        spectrum = torch.view_as_complex(spectrum.contiguous()) * self.scale
        t = torch.fft.irfftn(spectrum, s=(h, w), dim=(-2, -1), norm="ortho")
        return self._to_rgb(t / 4.0)  # Lucid's "magic" 4 keeps the start near gray

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decay_power={self.decay_power}"


def fft_image(
    size: int | tuple[int, int],
    batch: int = 1,
    *,
    sd: float = 0.01,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    generator: Generators | None = None,
    device: str | torch.device = "cpu",
    init: torch.Tensor | None = None,
) -> FFTImage:
    """A batch of images parameterized by their scaled Fourier spectrum (Lucid ``param.image(fft=True)``).

    Args:
        size: side ``S`` or ``(H, W)`` of the images.
        batch: B, the number of images.
        sd: standard deviation of the random spectrum at the start (Lucid: 0.01).
        decay_power: the spectrum is scaled by ``1 / freq ** decay_power`` (Lucid: 1).
        decorrelate: apply Lucid's ImageNet color decorrelation (default True).
        generator: a ``torch.Generator`` (shared by the batch) or B generators (one per image);
            required unless ``init`` is given.
        device: where the parameters live.
        init: optional start images (B or 1, 3, H, W) in [0, 1] instead of random noise, e.g. a
            photo for DeepDream; the spectrum is set so that ``forward()`` returns them (up to
            clamping to [0.001, 0.999]).

    Returns:
        an :class:`FFTImage`; ``forward()`` gives (B, 3, H, W) in (0, 1).
    """
    return FFTImage(size, batch, sd=sd, decay_power=decay_power, decorrelate=decorrelate,
                    generator=generator, device=device, init=init)


def pixel_image(
    size: int | tuple[int, int],
    batch: int = 1,
    *,
    sd: float = 0.01,
    decorrelate: bool = True,
    generator: Generators | None = None,
    device: str | torch.device = "cpu",
    init: torch.Tensor | None = None,
) -> PixelImage:
    """A batch of images with one free value per pixel (Lucid ``param.image(fft=False)``).

    Arguments as in :func:`fft_image`. Converges to noisier images than the FFT parameterization;
    mostly useful as a baseline and for DeepDream-like edits of a photo (``init=``).
    """
    return PixelImage(size, batch, sd=sd, decorrelate=decorrelate, generator=generator, device=device, init=init)



class MacoImage(ImageParam):
    """Fixed natural magnitude, optimized phase (MACO); see :func:`maco_image`."""

    def __init__(
        self,
        size: int | tuple[int, int],
        batch: int = 1,
        *,
        magnitude: np.ndarray | torch.Tensor | None = None,
        generator: Generators | None = None,
        device: str | torch.device = "cpu",
        init: torch.Tensor | None = None,
    ):
        from atlas.optvis.spectrum import natural_magnitude

        super().__init__(batch, _as_size(size), decorrelate=True)
        h, w = self.size
        mag = natural_magnitude((h, w), None if magnitude is None else np.asarray(magnitude, np.float32))
        mag[:, 0, 0] = 0.0  # the mean is set by the standardization, not by the spectrum
        self.register_buffer("magnitude", mag, persistent=False)
        if init is not None:
            t = self._from_rgb(self._check_init(init).to(self.color.device))
            values = torch.angle(torch.fft.rfft2(t, norm="ortho"))
        else:
            # uniform phases: normal ones (mean cos > 0) would add a bright spike at the origin
            gens = per_item_generators(generator, batch)
            values = torch.stack([torch.rand((3, h, w // 2 + 1), generator=g) for g in gens]) * (2 * np.pi) - np.pi
        self.phase = nn.Parameter(values.to(device))
        self.to(device)

    def forward(self) -> torch.Tensor:
        h, w = self.size
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        t = torch.fft.irfft2(spectrum, s=(h, w), norm="ortho")
        t = (t - t.mean(dim=(1, 2, 3), keepdim=True)) / (t.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._to_rgb(t)


def maco_image(
    size: int | tuple[int, int],
    batch: int = 1,
    *,
    magnitude: np.ndarray | torch.Tensor | None = None,
    generator: Generators | None = None,
    device: str | torch.device = "cpu",
    init: torch.Tensor | None = None,
) -> MacoImage:
    """A batch of images whose spectrum has a fixed natural magnitude and an optimized phase (MACO).

    Fel et al., NeurIPS 2023: ``image = sigmoid(color @ standardize(irfft2(|M| * exp(i * phase))))``
    with ``|M|`` the mean magnitude of natural photos in the decorrelated color space
    (:func:`atlas.optvis.spectrum.natural_magnitude`, packaged; or ``magnitude`` (3, H', W'//2+1)
    of your own, resampled to ``size``). Only the phase (B, 3, H, W // 2 + 1) is a parameter,
    so the images keep the power spectrum of photos however long they are optimized; this is
    what lets MACO visualize deep networks without high-frequency noise.

    Args:
        size, batch, generator, device, init: as in :func:`fft_image` (``init`` sets the phase
            to a photo's; its magnitude is still the natural one).
        The random start has uniform phases in [-pi, pi).
        magnitude: your own magnitude, e.g. from :func:`atlas.optvis.spectrum.compute_magnitude`.

    Phases are in radians, so they want a larger learning rate than the FFT spectrum: see
    :data:`PARAMETERIZATIONS`.
    """
    return MacoImage(size, batch, magnitude=magnitude, generator=generator, device=device, init=init)


#: Parameterizations by name, with the Adam learning rate each is tuned for on InceptionV1
#: (``benchmarks/bench_vis_peer.py``).
PARAMETERIZATIONS: dict[str, float] = {"fft": 0.05, "pixel": 0.05, "maco": 0.25}


def make_image(name: str, size: int | tuple[int, int], batch: int = 1, *, generator: Generators | None = None,
               device: str | torch.device = "cpu", init: torch.Tensor | None = None) -> ImageParam:
    """The parameterization called ``name`` (``fft``, ``pixel`` or ``maco``)."""
    factories = {"fft": fft_image, "pixel": pixel_image, "maco": maco_image}
    if name not in factories:
        raise ValueError(f"unknown parameterization {name!r}; choose one of {', '.join(factories)}")
    return factories[name](size, batch, generator=generator, device=device, init=init)
