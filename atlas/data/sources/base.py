"""What every image source shares: :class:`ImageRef` (one image), the :class:`ImageSource` base class,
:class:`EmptySourceError`, the image extensions (:data:`IMAGE_EXTENSIONS`) and the name checks the
sources use."""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)

PathLike = Union[str, os.PathLike]

_ACCEPTED = (
    "a folder of images (searched recursively), a list file (one path a line, optional "
    "tab-separated label), a .tar shard, a glob like 'shards/*.tar', or a list of .tar paths"
)


class EmptySourceError(ValueError):
    """A source that holds no image at all; the message says what was searched and what is accepted."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of a source.

    Attributes:
        index: position in the source, 0..N-1 (sorted order; stable for the same source).
        key: what is shown and stored: the path relative to a folder source's root, the path as
            written in a list file, or ``"shard.tar::member"``.
        label: ImageNet class index if known, else -1.
    """

    index: int
    key: str
    label: int = -1


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_tar(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(".tar")


def _is_compressed_tar(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst"))


class ImageSource(abc.ABC):
    """A fixed, ordered list of images and a way to read each one's bytes.

    Attributes:
        kind: ``"folder"``, ``"list"`` or ``"tar"``.
        root: a description of where the images are, for messages and artifact attributes.
        ignored_files: files (or tar members) seen but not taken as images.

    Subclasses are picklable (open file handles are not part of their state), so they can be
    handed to DataLoader worker processes.
    """

    kind: str = "source"

    def __init__(self, root: str, refs: Sequence[ImageRef], ignored_files: int = 0):
        self.root = root
        self._refs = tuple(refs)
        self.ignored_files = ignored_files

    def __len__(self) -> int:
        return len(self._refs)

    def refs(self) -> Sequence[ImageRef]:
        """Every image, ``refs()[i].index == i``."""
        return self._refs

    def keys(self) -> list[str]:
        return [r.key for r in self._refs]

    def labels(self) -> np.ndarray:
        """(N,) int32 class index per image, -1 where unknown."""
        return np.fromiter((r.label for r in self._refs), dtype=np.int32, count=len(self._refs))

    def ref(self, key: str) -> ImageRef:
        """The image whose key is ``key``; ``KeyError`` if there is none."""
        by_key = self.__dict__.get("_by_key")
        if by_key is None:
            by_key = self._by_key = {r.key: r for r in self._refs}
        try:
            return by_key[key]
        except KeyError:
            raise KeyError(f"no image with key {key!r} in {self.root}") from None

    def path(self, ref: ImageRef | str) -> str | None:
        """The file of an image on disk, or None where there is none (a tar member)."""
        return None

    @abc.abstractmethod
    def read_bytes(self, ref: ImageRef | str) -> bytes:
        """The encoded bytes of one image (given by its ref or its key). Raises
        ``FileNotFoundError`` when the file (or shard) is gone, ``EOFError`` when fewer bytes than
        indexed are there, other ``OSError``s as they come."""

    def _resolve(self, ref: ImageRef | str) -> ImageRef:
        return self.ref(ref) if isinstance(ref, str) else ref

    def close(self) -> None:
        """Release open file handles (they are reopened on the next read)."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r}, {len(self)} images, {self.ignored_files} ignored)"
