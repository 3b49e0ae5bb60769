"""Batched JPEG decoding on the model's device (collect's GPU path).

Collect on a GPU is bound by decoding: a PIL decode of an ImageNet photo costs a few ms of one
core, so a machine's decode workers top out far below what one GPU computes per second. Here
DataLoader workers only *read* the files (and check their headers); the main process decodes
each batch with TorchCodec (:func:`atlas.data.decode_jpegs`: nvJPEG on CUDA, libjpeg-turbo on
the CPU), then resizes and crops on the device. The contract:

- ``decode="cpu"``: the PIL path of :mod:`atlas.data` in the workers (the default on a CPU).
- ``decode="gpu"``: the batched path on the model's device. With a CPU model it runs the same
  code with TorchCodec's CPU decoder (in the main process), which is how it is tested here.
- ``decode="auto"``: ``"gpu"`` when the model is on CUDA, else ``"cpu"``.

The batched path needs TorchCodec (:func:`atlas.data.jpeg_batch_decoder`). Where it is not
installed or does not load, ``"gpu"`` and ``"auto"`` fall back to ``"cpu"``, the PIL path, with
a warning that says why; :func:`decode_batch` called directly then decodes its JPEGs with PIL.

What goes through the batched path: baseline or progressive JPEGs in RGB or grayscale whose
data ends with the end-of-image marker and that have no EXIF orientation (TorchCodec always
applies one; atlas's PIL decoding does not, like torchvision's ``ImageFolder`` loader), within
``min_side`` and ``max_pixels``. Everything else (PNG, CMYK JPEGs, a JPEG missing its end marker,
a rotated camera photo, a huge JPEG that PIL would draft-decode) is decoded by PIL in the
worker, exactly as with ``decode="cpu"``, so bad files are skipped and counted with the same
:data:`~atlas.data.SKIP_REASONS`. A JPEG that the batched decoder rejects is handed to PIL too,
which either decodes it or classifies it.

Pixels: TorchCodec's CPU decoder gives the same 8-bit pixels as PIL's full-size decode (both
libjpeg-turbo: identical on the 1000 ImageNet sample photos). The batched path resizes with
``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``, rounds to 8-bit like PIL,
and crops like :class:`~atlas.models.ImageTransform`. PIL's bilinear filter differs from this
in rounding: on the ImageNet sample the two paths differ by 0.23 levels of 255 on average over
100 photos, 99% of pixels by at most 2, the largest single pixel by 57
(``tests/data/test_batch_decode.py`` checks a mean below 1.5 levels and the activations' cosine
above 0.99). PIL also decodes large JPEGs at a reduced DCT scale (``draft``) where that stays
above the resize target; the batched path always decodes at full size and lets the antialiased
resize do the reduction, so such photos differ a little more.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from atlas.data import (
    SKIP_REASONS,
    BadImage,
    ImageDataset,
    decode_image,
    decode_jpegs,
    jpeg_batch_decoder,
    read_image_bytes,
    torchcodec_problem,
)
from atlas.runtime.precision import PRECISIONS, autocast

__all__ = [
    "DECODE_MODES",
    "PRECISIONS",
    "EncodedImageDataset",
    "autocast",
    "collate_encoded",
    "decode_batch",
    "resize_crop",
    "resolve_decode",
]

log = logging.getLogger(__name__)

DecodeMode = Literal["auto", "cpu", "gpu"]
#: Accepted values of collect's ``decode``.
DECODE_MODES: tuple[str, ...] = ("auto", "cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


def resolve_decode(mode: str, device: torch.device | str, transform: Any = None) -> Literal["cpu", "gpu"]:
    """Where collect decodes: ``"cpu"`` (PIL in the workers) or ``"gpu"`` (batched on ``device``).

    ``"auto"`` is ``"gpu"`` on a CUDA device, else ``"cpu"``. ``"gpu"`` needs a transform with
    ``target_size(w, h)`` and an integer ``crop`` (as :class:`~atlas.models.ImageTransform`);
    with another transform ``"auto"`` falls back to ``"cpu"`` and ``"gpu"`` is an error.
    ``"gpu"`` also needs TorchCodec: without it (:func:`atlas.data.torchcodec_problem`) both
    ``"gpu"`` and ``"auto"`` give ``"cpu"``, with a warning saying why.
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, not {mode!r}")
    dev = torch.device(device)
    batched_ok = callable(getattr(transform, "target_size", None)) and isinstance(getattr(transform, "crop", None), int)
    if transform is not None and not batched_ok:
        if mode == "gpu":
            raise ValueError(f"decode='gpu' needs an ImageTransform-like transform (target_size and an integer "
                             f"crop), not {transform!r}; use decode='cpu'")
        return "cpu"
    if mode == "cpu" or (mode == "auto" and dev.type != "cuda"):
        return "cpu"
    if jpeg_batch_decoder() != "torchcodec":
        log.warning("decode=%r: the batched JPEG decoder needs TorchCodec (pip install torchcodec), but %s; "
                    "decoding with PIL in the workers (decode='cpu')", mode, torchcodec_problem())
        return "cpu"
    if dev.type != "cuda":
        log.info("decode='gpu' with the model on %s: the batched TorchCodec decoder runs on the CPU", dev)
    return "gpu"


_EXIF_ORIENTATION = 0x0112


def _jpeg_header(data: bytes) -> tuple[int, int, str, bool] | None:
    """(width, height, mode, upright) of a JPEG's header, or None if it is not one PIL can read
    the header of. ``upright``: no EXIF orientation other than 1 (an unreadable EXIF block counts
    as not upright, so that PIL decodes the file)."""
    from PIL import JpegImagePlugin

    try:
        img = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    except Exception:  # noqa: BLE001 -- not a readable JPEG header: PIL's path classifies it
        return None
    upright = True
    if "exif" in img.info:
        try:
            upright = img.getexif().get(_EXIF_ORIENTATION, 1) == 1
        except Exception:  # noqa: BLE001 -- a damaged EXIF block: leave the file to PIL
            upright = False
    return img.size[0], img.size[1], img.mode, upright


class EncodedImageDataset(ImageDataset):
    """An :class:`~atlas.data.ImageDataset` whose JPEGs stay encoded for :func:`decode_batch`.

    Item ``i`` is ``(image index, payload, status code)`` where the payload is

    - ``("jpeg", (L,) uint8 tensor)``: the file's bytes, for the batched decoder;
    - ``("decoded", (3, S, S) float tensor)``: decoded by PIL in the worker (not a JPEG the
      batched path takes; see the module docstring);
    - ``None`` with a non-zero code: a bad file, as in the parent class.
    """

    def __getitem__(self, i: int) -> tuple[int, tuple[str, torch.Tensor] | None, int]:  # type: ignore[override]
        index = int(self.indices[i])
        ref = self.source.refs()[index]
        try:
            data = read_image_bytes(self.source, ref)
            header = _jpeg_header(data) if data[:3] == _JPEG_MAGIC and data.rstrip(b"\0").endswith(_JPEG_EOI) else None
            if header is not None:
                w, h, mode, upright = header
                if min(w, h) < self.min_side:
                    raise BadImage("too small", f"{w}x{h}, sides must be at least {self.min_side}")
                if mode in ("RGB", "L") and upright and w * h <= self.max_pixels:
                    return index, ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)), 0
            img = decode_image(data, target_size=self.target_size, max_pixels=self.max_pixels,
                               min_side=self.min_side)
        except BadImage as e:
            log.debug("skipping image %d (%s): %s", index, ref.key, e)
            return index, None, e.code
        return index, ("decoded", self.transform(img)), 0

    @property
    def collate_fn(self) -> Callable[[Sequence[tuple]], tuple]:
        return collate_encoded


def collate_encoded(
    batch: Sequence[tuple[int, tuple[str, torch.Tensor] | None, int]],
) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]], list[tuple[int, torch.Tensor]], list[tuple[int, int]]]:
    """Batch :class:`EncodedImageDataset` items.

    Returns:
        indices: (B,) int64 image index of every item, in batch order;
        jpegs: ``(index, (L,) uint8 bytes)`` for the batched decoder;
        decoded: ``(index, (3, S, S) float)`` decoded in the worker;
        failures: ``(index, status code)`` of bad files.
    """
    indices = torch.tensor([int(item[0]) for item in batch], dtype=torch.int64)
    jpegs, decoded, failures = [], [], []
    for index, payload, code in batch:
        if code != 0 or payload is None:
            failures.append((int(index), int(code) or SKIP_REASONS["unreadable"]))
        elif payload[0] == "jpeg":
            jpegs.append((int(index), payload[1]))
        else:
            decoded.append((int(index), payload[1]))
    return indices, jpegs, decoded, failures


def resize_crop(image: torch.Tensor, transform: Any) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, S, S) float in [0, 1] on the same device: the transform's resize
    (bilinear, antialiased, rounded to 8 bit like PIL) then its center crop of ``S = transform.crop``."""
    h, w = image.shape[-2:]
    tw, th = transform.target_size(int(w), int(h))
    x = image[None].float()
    if (th, tw) != (h, w):
        x = F.interpolate(x, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)
    c = transform.crop
    left, top = (tw - c) // 2, (th - c) // 2
    return x[0, :, top:top + c, left:left + c].div_(255.0)


def decode_batch(
    jpegs: Sequence[tuple[int, torch.Tensor]],
    decoded: Sequence[tuple[int, torch.Tensor]],
    transform: Any,
    device: torch.device | str,
    *,
    max_pixels: int | None = None,
    min_side: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Decode a batch's JPEGs on ``device`` and join them with the worker-decoded images.

    The JPEGs are decoded by TorchCodec (:func:`atlas.data.decode_jpegs`); where it is not usable
    (:func:`atlas.data.jpeg_batch_decoder` is ``"pil"``) each is decoded by PIL, in this process,
    with the pixels of the ``decode="cpu"`` path.

    Args:
        jpegs, decoded: as returned by :func:`collate_encoded`.
        transform: an :class:`~atlas.models.ImageTransform` (its resize target and crop).
        max_pixels, min_side: limits for the PIL retry of rejected JPEGs (defaults of
            :func:`atlas.data.decode_image`).

    Returns:
        images: (B_ok, 3, S, S) float in [0, 1] on ``device``, ordered by image index;
        ok: (B_ok,) int64 image index of each row;
        failures: ``(index, status code)`` of JPEGs that neither decoder could read.
    """
    dev = torch.device(device)
    out: dict[int, torch.Tensor] = {}
    failures: list[tuple[int, int]] = []
    if jpegs:
        datas = [d for _, d in jpegs]
        if jpeg_batch_decoder() == "torchcodec":
            images: list[torch.Tensor | None] = decode_jpegs(datas, dev)
        else:
            images = [None] * len(datas)
        for (index, data), img in zip(jpegs, images):
            if img is not None:
                out[index] = resize_crop(img, transform)
                continue
            # rejected by TorchCodec, or no TorchCodec: PIL decodes it or says what is wrong with it
            limits = {k: v for k, v in (("max_pixels", max_pixels), ("min_side", min_side)) if v is not None}
            try:
                pil = decode_image(data.numpy().tobytes(), target_size=getattr(transform, "target_size", None),
                                   **limits)
            except BadImage as e:
                log.debug("skipping image %d: %s", index, e)
                failures.append((index, e.code))
                continue
            out[index] = transform(pil).to(dev)
    for index, t in decoded:
        out[index] = t.to(dev, non_blocking=True)
    order = sorted(out)
    crop = getattr(transform, "crop", 0)
    stacked = torch.stack([out[i] for i in order]) if order else torch.empty((0, 3, crop, crop), device=dev)
    return stacked, torch.tensor(order, dtype=torch.int64), failures
