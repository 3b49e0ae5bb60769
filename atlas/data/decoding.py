"""Decoding one image robustly: bytes -> an 8-bit RGB ``PIL.Image``, or a :class:`BadImage` saying why.

Decoding (:func:`decode_image`) returns an 8-bit RGB ``PIL.Image`` or raises :class:`BadImage`
whose ``reason`` is one of :data:`SKIP_REASONS`; a bad file is counted and skipped, never fatal.
Codes are stable (they are stored in the ``/images/status`` column of ``activations.h5``):

====  ================  ==========================================================================
code  reason            meaning
====  ================  ==========================================================================
0     ``ok``            decoded and used
1     ``empty file``    zero bytes
2     ``missing file``  listed, but the file (or tar shard) is not there
3     ``not an image``  no known image format (e.g. text saved as ``.jpg``)
4     ``truncated``     the image data ends early
5     ``too large``     more than ``max_pixels`` pixels even after JPEG draft reduction
6     ``too small``     a side shorter than ``min_side`` pixels
7     ``unreadable``    anything else: a corrupt header or stream, an unsupported mode, an I/O error
====  ================  ==========================================================================

Mode conversion: grayscale (``1``, ``L``), palette (``P``), ``CMYK``, ``YCbCr`` and ``RGBX``
convert with PIL; images with transparency (``RGBA``, ``LA``, ``PA``, ``P`` or ``L``/``RGB`` with a
transparent colour) are composited **on white**, since the colour under a fully transparent pixel
is arbitrary and white is how the image looks on a page; 16-bit modes (``I;16``, ``I;16B``, ``I``)
are scaled from 0..65535 to 0..255 (``I`` is clipped to that range first); float ``F`` images in
[0, 1] are scaled by 255, other float ranges are stretched from their min..max. EXIF orientation
and ICC profiles are not applied, as in torchvision's ``ImageFolder`` loader that ImageNet
classifiers are trained with. Animated and multi-page files give their first frame.

With a target size, JPEGs are decoded at a reduced DCT scale (``draft``): the largest that keeps both
sides at least the target, so a large photo is not decoded at full size only to be shrunk.

The batched JPEG decoder (collect's ``decode="gpu"`` path) is chosen here, in one place:
:func:`jpeg_batch_decoder` is ``"torchcodec"`` where TorchCodec is installed and decodes a JPEG
in this process (:func:`decode_jpegs`: libjpeg-turbo on the CPU, one nvJPEG call per batch on
CUDA), else ``"pil"``: :func:`decode_image` above, which collect then runs in its decode workers.
TorchCodec needs no system FFmpeg for still images (its wheel carries libjpeg-turbo and nvJPEG).
torchvision's own decoders (``torchvision.io``) are deprecated since torchvision 0.29 and are
not used.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

log = logging.getLogger(__name__)

SKIP_REASONS: dict[str, int] = {
    "ok": 0,
    "empty file": 1,
    "missing file": 2,
    "not an image": 3,
    "truncated": 4,
    "too large": 5,
    "too small": 6,
    "unreadable": 7,
}
_REASON_NAMES: dict[int, str] = {code: name for name, code in SKIP_REASONS.items()}

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 16

TargetSize = Union[tuple[int, int], Callable[[int, int], tuple[int, int]], None]

# Signatures of formats PIL could decode: data that starts like one of these but cannot be opened
# is a damaged image ("unreadable"), anything else is "not an image".
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"P1", b"P2",
          b"P3", b"P4", b"P5", b"P6", b"P7")


def reason_name(code: int) -> str:
    """The reason (a :data:`SKIP_REASONS` key) of a status code; unknown codes raise ValueError."""
    try:
        return _REASON_NAMES[int(code)]
    except KeyError:
        raise ValueError(f"unknown status code {code}; known codes: {_REASON_NAMES}") from None


class BadImage(Exception):
    """An image that cannot be used; ``reason`` is a :data:`SKIP_REASONS` key, ``code`` its number."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in SKIP_REASONS or reason == "ok":
            raise ValueError(f"unknown skip reason {reason!r}; use one of {sorted(SKIP_REASONS)[1:]}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    @property
    def code(self) -> int:
        return SKIP_REASONS[self.reason]

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across DataLoader workers
        return (type(self), (self.reason, self.detail))


def _classify_open_error(data: bytes, err: BaseException) -> BadImage:
    if isinstance(err, UnidentifiedImageError):
        if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            return BadImage("unreadable", "starts like an image, but its header is damaged or cut short")
        return BadImage("not an image", "no known image format")
    return _classify_load_error(err)


def _classify_load_error(err: BaseException) -> BadImage:
    if isinstance(err, Image.DecompressionBombError):
        return BadImage("too large", str(err))
    if isinstance(err, MemoryError):
        return BadImage("too large", "out of memory while decoding")
    message = str(err) or type(err).__name__
    if isinstance(err, EOFError) or "truncated" in message.lower():
        return BadImage("truncated", message)
    return BadImage("unreadable", f"{type(err).__name__}: {message}")


def _open(data: bytes) -> Image.Image:
    """Open (header only). JPEGs are opened directly so that a JPEG over PIL's own pixel limit can
    still be reduced with draft(); :func:`decode_image` applies its ``max_pixels`` instead."""
    if data[:3] == b"\xff\xd8\xff":
        try:
            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        except SyntaxError:
            pass  # not a JPEG after all: let PIL identify it
    return Image.open(io.BytesIO(data))


def _jpeg_scale(size: tuple[int, int], target: tuple[int, int] | None, max_pixels: int) -> int | None:
    """The DCT scale (1, 2, 4 or 8) to decode a JPEG at, or None when none fits ``max_pixels``.

    With a target, the largest scale that keeps both sides >= the target (libjpeg rounds sides up,
    so ``w >= s * tw`` is enough); without one, the smallest scale under the pixel limit.
    """
    w, h = size

    def pixels(s: int) -> int:
        return (-(-w // s)) * (-(-h // s))

    if target is not None:
        tw, th = target
        s = max((s for s in (2, 4, 8) if w >= s * tw and h >= s * th), default=1)
        return s if pixels(s) <= max_pixels else None
    return next((s for s in (1, 2, 4, 8) if pixels(s) <= max_pixels), None)


def decode_image(
    data: bytes,
    *,
    target_size: TargetSize = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """Decode encoded image bytes to an 8-bit RGB ``PIL.Image``; raise :class:`BadImage` if unusable.

    Args:
        data: the file's bytes.
        target_size: ``(width, height)`` the image will be resized to next, or a function
            ``(width, height) -> (w, h)`` such as :meth:`atlas.models.ImageTransform.target_size`.
            JPEGs are then decoded at a reduced DCT scale (1/2, 1/4 or 1/8, via ``Image.draft``)
            that never goes below it. ``None`` (default): full size.
        max_pixels: images with more pixels are refused (``"too large"``) before any pixel buffer
            is allocated; a JPEG is first reduced by draft where that brings it under the limit
            (and, with a target, keeps it at least that large). Default 50 M. PIL's own
            ``Image.MAX_IMAGE_PIXELS`` still applies to non-JPEG formats (over twice it:
            ``"too large"``).
        min_side: images with a side shorter than this are refused (``"too small"``). Default 16.

    Returns:
        A loaded ``RGB`` image (see the module docstring for how modes are converted).

    Raises:
        BadImage: reason ``"empty file"``, ``"not an image"``, ``"truncated"``, ``"too large"``,
            ``"too small"`` or ``"unreadable"``. No other exception escapes for bad data.
    """
    if not data:
        raise BadImage("empty file")
    try:
        img = _open(data)
        w, h = img.size
        if min(w, h) < min_side:
            raise BadImage("too small", f"{w}x{h}, sides must be at least {min_side}")
        target = target_size(w, h) if callable(target_size) else target_size
        if isinstance(img, JpegImagePlugin.JpegImageFile) and (target is not None or w * h > max_pixels):
            scale = _jpeg_scale((w, h), target, max_pixels)
            if scale is None:
                raise BadImage("too large", f"{w}x{h} = {w * h} pixels, over {max_pixels} even at 1/8 scale")
            if scale > 1:
                img.draft("RGB", (w // scale, h // scale))
        if img.size[0] * img.size[1] > max_pixels:
            raise BadImage("too large", f"{w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
        img.load()
        return to_rgb(img)
    except BadImage:
        raise
    except UnidentifiedImageError as e:
        raise _classify_open_error(data, e) from None
    except Exception as e:  # noqa: BLE001 -- any decoder failure on bad data is a skipped image
        raise _classify_load_error(e) from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any PIL mode to 8-bit ``RGB`` (rules in the module docstring).

    Raises ``ValueError`` for a mode without a conversion (e.g. ``LAB``).
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(img).astype(np.int64)
        # round(x * 255 / 65535): 65535 -> 255, 32768 -> 128, 257 -> 1
        eight = (np.clip(wide, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(eight.astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        x = np.asarray(img, dtype=np.float64)
        x = np.where(np.isfinite(x), x, 0.0)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
        if lo < 0.0 or hi > 1.0:
            x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
        return Image.fromarray(np.rint(x * 255.0).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")


def open_photo(path: str | os.PathLike) -> Image.Image:
    """One photo file given by a user, decoded to RGB; ``ValueError`` saying why for a missing
    file or one that is not a usable image (the reasons of :class:`BadImage`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist; give the path of a photo (JPEG, PNG, ...)")
    try:
        return decode_image(path.read_bytes())
    except BadImage as e:
        raise ValueError(f"{path} cannot be used as a photo: {e.reason}") from e


@functools.lru_cache(maxsize=1)
def _torchcodec_problem() -> str | None:
    """Checked once per process: see :func:`torchcodec_problem`."""
    try:
        from torchcodec.decoders import decode_jpeg
    except Exception as e:  # noqa: BLE001 -- not installed, or its native library does not load here
        return f"torchcodec cannot be imported ({type(e).__name__}: {e})"
    probe = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 60)).save(probe, "JPEG", quality=95)
    try:
        img = decode_jpeg(probe.getvalue(), mode="RGB")
    except Exception as e:  # noqa: BLE001 -- installed but unusable (e.g. built for another torch)
        return f"torchcodec is installed but cannot decode a JPEG ({type(e).__name__}: {e})"
    if tuple(img.shape) != (3, 8, 16) or img.dtype != torch.uint8 or abs(int(img[0, 4, 8]) - 200) > 8:
        return f"torchcodec decoded a test JPEG wrongly (shape {tuple(img.shape)}, dtype {img.dtype})"
    return None


def torchcodec_problem() -> str | None:
    """Why TorchCodec cannot decode JPEGs in this process (not installed, its native library does
    not load, ...), or ``None`` when it can. Checked once, by decoding a small JPEG."""
    return _torchcodec_problem()


def jpeg_batch_decoder() -> Literal["torchcodec", "pil"]:
    """The decoder of collect's batched JPEG path: ``"torchcodec"`` where TorchCodec works here
    (:func:`torchcodec_problem` is ``None``), else ``"pil"`` (:func:`decode_image`)."""
    return "pil" if _torchcodec_problem() else "torchcodec"


def decode_jpegs(datas: Sequence[torch.Tensor], device: torch.device | str = "cpu") -> list[torch.Tensor | None]:
    """Decode JPEGs with TorchCodec: each ``(L,)`` uint8 CPU tensor of a file's bytes becomes a
    ``(3, H, W)`` uint8 RGB tensor on ``device`` (libjpeg-turbo on the CPU, nvJPEG in one batch on
    CUDA), or ``None`` where the decoder rejects the data (a damaged stream: :func:`decode_image`
    then says why).

    TorchCodec always applies a JPEG's EXIF orientation, which :func:`decode_image` does not: give
    it only JPEGs without one (collect's batched path routes the others to PIL). Raises
    ``RuntimeError`` when TorchCodec is not usable here (:func:`torchcodec_problem`).
    """
    problem = _torchcodec_problem()
    if problem:
        raise RuntimeError(f"decode_jpegs needs TorchCodec: {problem}")
    from torchcodec.decoders import decode_jpeg

    dev = torch.device(device)
    if not datas:
        return []
    try:
        return list(decode_jpeg(list(datas), mode="RGB", device=dev))
    except (RuntimeError, ValueError):
        pass  # one bad stream fails the whole batch: decode one by one to find it
    out: list[torch.Tensor | None] = []
    for data in datas:
        try:
            out.append(decode_jpeg(data, mode="RGB", device=dev))
        except (RuntimeError, ValueError) as e:
            log.debug("torchcodec rejected a JPEG: %s", e)
            out.append(None)
    return out


__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MIN_SIDE", "SKIP_REASONS", "BadImage", "TargetSize",
           "decode_image", "decode_jpegs", "jpeg_batch_decoder", "open_photo", "reason_name", "to_rgb",
           "torchcodec_problem"]
