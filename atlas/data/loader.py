"""Reading the images of a source for a ``torch.utils.data.DataLoader``: a bad file is counted, never fatal.

:class:`ImageDataset` serves ``(image index, tensor or None, status code)`` items; a failed item
carries its :data:`~atlas.data.decoding.SKIP_REASONS` code, and :func:`collate_images` sets such
items aside when batching. Read errors of a source map to skip reasons in :func:`read_image_bytes`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from atlas.data.decoding import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, SKIP_REASONS, BadImage, TargetSize, decode_image
from atlas.data.sources import ImageRef, ImageSource

log = logging.getLogger(__name__)


def load_image(
    source: ImageSource,
    ref: ImageRef,
    *,
    target_size: TargetSize = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> Image.Image:
    """Read and decode one image of a source; every failure is a :class:`BadImage`.

    Read errors map to ``"missing file"`` (file or shard gone), ``"truncated"`` (a tar member
    past the end of its shard) and ``"unreadable"`` (other I/O errors); the rest is
    :func:`decode_image`.
    """
    return decode_image(read_image_bytes(source, ref), target_size=target_size, max_pixels=max_pixels,
                        min_side=min_side)


def read_image_bytes(source: ImageSource, ref: ImageRef) -> bytes:
    """The file bytes of one image; read errors become a :class:`BadImage` with reason
    ``"missing file"``, ``"truncated"`` or ``"unreadable"`` (see :func:`load_image`)."""
    try:
        return source.read_bytes(ref)
    except FileNotFoundError as e:
        raise BadImage("missing file", str(e)) from None
    except EOFError as e:
        raise BadImage("truncated", str(e)) from None
    except OSError as e:
        raise BadImage("unreadable", f"{type(e).__name__}: {e}") from None


# -------------------------------------------------------------------------------------- dataset


class ImageDataset(torch.utils.data.Dataset):
    """A map-style dataset over (a subset of) a source: item ``i`` is
    ``(image index, (3, S, S) float tensor in [0, 1] or None, status code)``.

    Args:
        source: the images.
        transform: PIL RGB image -> (3, S, S) tensor, e.g. :class:`atlas.models.ImageTransform`.
            Exceptions it raises are not caught (a failing transform is a bug, not a bad file).
        indices: source indices to serve, in this order (default: all). Lets a caller shard a
            source across processes or skip images already done.
        target_size: the JPEG draft target (see :func:`decode_image`); default: the transform's
            ``target_size(width, height)`` method when it has one, else full-size decoding.
        max_pixels, min_side: as in :func:`decode_image`.

    A bad image gives ``(index, None, code)`` with a non-zero :data:`SKIP_REASONS` code and a
    DEBUG log line with the key and the reason. Batch with :attr:`collate_fn` (or
    :func:`collate_images`).
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable[[Image.Image], torch.Tensor],
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        target_size: TargetSize = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
    ):
        n = len(source)
        if indices is None:
            idx = np.arange(n, dtype=np.int64)
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                bad = int(idx[(idx < 0) | (idx >= n)][0])
                raise ValueError(f"index {bad} is out of range for a source of {n} images (0..{n - 1})")
        if max_pixels < 1 or min_side < 1:
            raise ValueError(f"max_pixels ({max_pixels}) and min_side ({min_side}) must be positive")
        self.source = source
        self.transform = transform
        self.indices = idx
        self.target_size: TargetSize = target_size if target_size is not None else getattr(
            transform, "target_size", None
        )
        self.max_pixels = max_pixels
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, int]:
        index = int(self.indices[i])
        ref = self.source.refs()[index]
        try:
            img = load_image(self.source, ref, target_size=self.target_size,
                             max_pixels=self.max_pixels, min_side=self.min_side)
        except BadImage as e:
            log.debug("skipping image %d (%s): %s", index, ref.key, e)
            return index, None, e.code
        return index, self.transform(img), 0

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(3, S, S) when the transform has an integer ``crop`` (as ImageTransform), else None."""
        crop = getattr(self.transform, "crop", None)
        return (3, crop, crop) if isinstance(crop, int) else None

    @property
    def collate_fn(self) -> Callable[[Sequence[tuple[int, torch.Tensor | None, int]]], tuple]:
        """:func:`collate_images` that knows :attr:`image_shape` (for all-failed batches); picklable."""
        return functools.partial(collate_images, image_shape=self.image_shape)


def collate_images(
    batch: Sequence[tuple[int, torch.Tensor | None, int]],
    *,
    image_shape: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Batch :class:`ImageDataset` items, setting the failed ones aside.

    Returns:
        indices: (B,) int64 image index of every item, in batch order.
        images: (B_ok, 3, S, S) float tensors of the decoded items; when all failed, an empty
            ``(0, *image_shape)`` tensor (``(0, 3, 0, 0)`` if ``image_shape`` is not given).
        ok: (B_ok,) int64 image index of each row of ``images``.
        failures: ``(image index, status code)`` of each failed item.
    """
    indices = torch.tensor([int(item[0]) for item in batch], dtype=torch.int64)
    good: list[tuple[int, torch.Tensor]] = []
    failures: list[tuple[int, int]] = []
    for index, tensor, code in batch:
        if code == 0 and tensor is not None:
            good.append((int(index), tensor))
        else:
            failures.append((int(index), int(code) or SKIP_REASONS["unreadable"]))
    ok = torch.tensor([i for i, _ in good], dtype=torch.int64)
    if not good:
        return indices, torch.empty((0, *(image_shape or (3, 0, 0)))), ok, failures
    shapes = {tuple(t.shape) for _, t in good}
    if len(shapes) > 1:
        raise ValueError(
            f"the transform returned tensors of different shapes {sorted(shapes)}; it must crop "
            f"every image to the same size (e.g. ImageTransform(resize, crop, ...))"
        )
    return indices, torch.stack([t for _, t in good]), ok, failures


__all__ = ["ImageDataset", "collate_images", "load_image", "read_image_bytes"]
