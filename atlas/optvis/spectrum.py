"""The mean Fourier magnitude of natural photos, the fixed part of the MACO parameterization.

Fel et al., "Unlocking Feature Visualization for Deeper Networks with MAgnitude Constrained
Optimization" (MACO, NeurIPS 2023) keep an image's Fourier *magnitude* fixed to that of natural
images and optimize only its *phase* (:class:`atlas.optvis.param.MacoImage`). The magnitude is
the mean over photos of ``|rfft2(t)|``, where ``t`` is the photo in the decorrelated color
space of :func:`~atlas.optvis.color.color_correlation_normalized` (the space the
parameterizations optimize in), with each photo's per-channel mean removed and a Hann window
applied (without it, the jump between opposite borders of a photo, which the FFT treats as
periodic, puts a bright cross on the frequency axes that draws a grid of lines over every image).

Shapes: a magnitude is float32 (3, H, W // 2 + 1), the layout of ``torch.fft.rfft2`` of an
(H, W) image. The package ships one computed at 224 x 224 from photos
(``data/natural_spectrum.npy``, float16; how it was made is in ``data/README.md``), and
:func:`natural_magnitude` resamples it to any size. :func:`compute_magnitude` recomputes it from
a user's own photos; nothing is downloaded.

``python -m atlas.optvis.spectrum PHOTOS_DIR -o data/natural_spectrum.npy`` rebuilds the file.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from atlas.data import list_photos
from atlas.optvis.color import color_correlation_normalized

__all__ = ["SPECTRUM_FILE", "SPECTRUM_SIZE", "compute_magnitude", "natural_magnitude", "resample_magnitude"]

log = logging.getLogger(__name__)

#: The packaged magnitude's file name under ``atlas/resources/data``.
SPECTRUM_FILE = "natural_spectrum.npy"
#: Side of the photos the packaged magnitude was computed at.
SPECTRUM_SIZE = 224

def _load_square(path: str | os.PathLike, size: int) -> torch.Tensor:
    """A photo as (3, size, size) floats in [0, 1]: shorter side resized to ``size``, center crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def compute_magnitude(photos: Iterable[str | os.PathLike], size: int = SPECTRUM_SIZE, *,
                      batch_size: int = 64) -> np.ndarray:
    """Mean Fourier magnitude (3, size, size // 2 + 1) float32 of ``photos`` in decorrelated color.

    Each photo is center-cropped to ``size`` x ``size``, moved to the decorrelated color space
    (the inverse of :func:`~atlas.optvis.color.color_correlation_normalized`), its per-channel
    mean removed, a 2-D Hann window applied, and ``|rfft2|`` (orthonormal) averaged over photos. Unreadable files are
    skipped with a warning. Raises ``ValueError`` when no photo could be read.
    """
    inv = torch.linalg.inv(color_correlation_normalized())
    hann = torch.hann_window(size, periodic=False, dtype=torch.float32)
    window = hann[:, None] * hann[None, :]
    total = torch.zeros(3, size, size // 2 + 1, dtype=torch.float64)
    n = 0
    skipped = 0
    batch: list[torch.Tensor] = []

    def flush() -> None:
        nonlocal total, n
        x = torch.stack(batch)
        t = torch.einsum("ij,bjhw->bihw", inv, x)
        t = (t - t.mean(dim=(2, 3), keepdim=True)) * window
        total += torch.fft.rfft2(t, norm="ortho").abs().sum(0).double()
        n += len(batch)
        batch.clear()

    for p in photos:
        try:
            batch.append(_load_square(p, size))
        except (OSError, ValueError) as e:
            skipped += 1
            log.warning("skipping %s: %s", p, e)
            continue
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if n == 0:
        raise ValueError("no readable photo: give a folder or list of JPEG/PNG photos")
    log.info("natural magnitude from %d photos at %d px (%d skipped)", n, size, skipped)
    return (total / n).float().numpy()


def resample_magnitude(magnitude: np.ndarray | torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resample a magnitude (3, H, W // 2 + 1) to another image size (3, h, w // 2 + 1).

    Bins are matched by frequency in cycles per image side: the spectrum is centered
    (``fftshift`` along the full axis), resized bilinearly with corners aligned to the
    frequency grid, and shifted back. The overall scale does not matter to
    :class:`~atlas.optvis.param.MacoImage` (it standardizes the image), so no energy correction
    is applied.
    """
    m = torch.as_tensor(np.asarray(magnitude, np.float32))
    if m.dim() != 3 or m.shape[0] != 3:
        raise ValueError(f"a magnitude is (3, H, W // 2 + 1), got shape {tuple(m.shape)}")
    h, w = (size, size) if isinstance(size, int) else size
    src_h = m.shape[1]
    if (h, w // 2 + 1) == tuple(m.shape[1:]):
        return m.clone()
    # full-height centered spectrum: rows ordered from the most negative to the most positive frequency
    centered = torch.fft.fftshift(m, dim=1)
    # target frequencies (cycles / image) on the source grid's index scale
    fy = torch.fft.fftshift(torch.fft.fftfreq(h)) * h  # cycles per image, target
    fx = torch.fft.rfftfreq(w) * w
    src_fy0 = -(src_h // 2)  # cycles per image of centered row 0
    rows = (fy - src_fy0).clamp(0, src_h - 1)
    cols = fx.clamp(0, m.shape[2] - 1)
    # grid_sample wants coordinates in [-1, 1] (align_corners=True: -1 = first bin, 1 = last bin)
    gy = rows / max(src_h - 1, 1) * 2 - 1
    gx = cols / max(m.shape[2] - 1, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(centered[None], grid, mode="bilinear", align_corners=True)[0]
    return torch.fft.ifftshift(out, dim=1).contiguous()


@lru_cache(maxsize=1)
def _packaged() -> np.ndarray:
    ref = resources.files("atlas.resources").joinpath("data", SPECTRUM_FILE)
    try:
        with ref.open("rb") as f:
            return np.load(f).astype(np.float32)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"the package's natural spectrum ({SPECTRUM_FILE}) is missing; rebuild it with "
            "`python -m atlas.optvis.spectrum PHOTOS_DIR -o data/natural_spectrum.npy`") from e


def natural_magnitude(size: int | tuple[int, int], magnitude: np.ndarray | None = None) -> torch.Tensor:
    """The natural-image magnitude for (H, W) images: (3, H, W // 2 + 1) float32.

    ``magnitude``: your own (from :func:`compute_magnitude`); default the packaged one.
    """
    return resample_magnitude(_packaged() if magnitude is None else magnitude, size)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atlas.optvis.spectrum",
                                 description="compute the mean Fourier magnitude of photos (MACO's fixed magnitude)")
    ap.add_argument("photos", nargs="+", type=Path, help="folders of photos (searched recursively)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="output .npy (float16, (3, S, S // 2 + 1))")
    ap.add_argument("--size", type=int, default=SPECTRUM_SIZE, help="center-crop side [%(default)s]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        paths = [p for folder in args.photos for p in list_photos(folder)]
    except ValueError as e:
        ap.error(str(e))
    if not paths:
        ap.error(f"no photos found under {', '.join(map(str, args.photos))}")
    mag = compute_magnitude(paths, args.size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, mag.astype(np.float16))
    print(f"wrote {args.output}: magnitude {mag.shape} from {len(paths)} photos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
