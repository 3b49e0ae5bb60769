"""Labels of images: an ImageNet class index from a WordNet id in a path, or a list file's label column.

A WordNet id (``n\\d{8}``, one of :func:`atlas.resources.imagenet_wnids`) counts at the start of
the file name (``n01440764_tench.JPEG``) or as the name of an enclosing folder
(``train/n01440764/x.jpg``); a list file's label may be an integer index, a WordNet id or a class
name. Unknown is -1. Which of these a source uses first is said in :mod:`atlas.data.sources`.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from atlas.resources import class_index, imagenet_wnids

_WNID_AT_START = re.compile(r"(n\d{8})(?![0-9])")
_WNID_FOLDER = re.compile(r"n\d{8}")


@functools.lru_cache(maxsize=1)
def _wnid_to_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(imagenet_wnids())}


def infer_label(path: str | os.PathLike | Sequence[str]) -> int:
    """ImageNet class index from a WordNet id in a path, else -1.

    The file name is checked first (``n01440764_tench.JPEG`` -> 0, ``n01440764.jpg`` -> 0), then
    the enclosing folders from the nearest outwards (``n01443537/x.jpg`` -> 1). ``path`` is a path
    or its components (file name last). Ids that are not ImageNet-1k classes do not count.
    """
    if isinstance(path, (str, os.PathLike)):
        parts: Sequence[str] = PurePosixPath(os.fspath(path).replace("\\", "/")).parts
    else:
        parts = path
    if not parts:
        return -1
    table = _wnid_to_index()
    m = _WNID_AT_START.match(parts[-1])
    if m and m.group(1) in table:
        return table[m.group(1)]
    for folder in reversed(parts[:-1]):
        if _WNID_FOLDER.fullmatch(folder) and folder in table:
            return table[folder]
    return -1


def parse_label(text: str, list_path: Path, lineno: int) -> int:
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        value = int(text)
        if value < -1:
            raise ValueError(f"{list_path}:{lineno}: label {value} is negative; use -1 for 'unknown'")
        return value
    try:
        return class_index(text)
    except ValueError as e:
        raise ValueError(f"{list_path}:{lineno}: {e}") from None


__all__ = ["infer_label", "parse_label"]
