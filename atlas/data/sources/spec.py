"""A source spec -> a source (:func:`open_source`): a folder, list file, tar shard(s), glob or list
of paths, each told apart and opened as its :class:`~atlas.data.sources.base.ImageSource`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from atlas.data.sources.base import (
    _ACCEPTED,
    EmptySourceError,
    ImageSource,
    PathLike,
    _has_image_extension,
    _is_compressed_tar,
    _is_tar,
)
from atlas.data.sources.folder import FolderSource
from atlas.data.sources.lists import ListSource
from atlas.data.sources.tar import TarSource

SourceSpec = Union[PathLike, Sequence[PathLike], "ImageSource"]

_GLOB_CHARS = re.compile(r"[*?\[]")


def open_source(spec: SourceSpec) -> ImageSource:
    """Open a folder, list file, tar shard(s), glob or list of paths as an :class:`ImageSource`.

    See the docstring of :mod:`atlas.data.sources` for the accepted forms, keys and labels. An
    :class:`ImageSource` is returned as is. Raises ``ValueError`` for a path that does not exist or
    cannot be used, and :class:`EmptySourceError` (a ``ValueError``) when there is no image.
    """
    if isinstance(spec, ImageSource):
        return spec
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise EmptySourceError(f"an empty list of paths was given. Accepted sources: {_ACCEPTED}.")
        paths: list[str] = []
        for item in spec:
            paths.extend(_expand(os.fspath(item)))
        return _from_files(paths, f"{len(paths)} paths")
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"cannot open an image source from {type(spec).__name__}; give {_ACCEPTED}")
    text = os.fspath(spec)
    path = Path(os.path.expanduser(text))
    if not path.exists() and _GLOB_CHARS.search(text):
        return _from_files(_expand(text), text)
    if not path.exists():
        raise ValueError(f"image source {text!r} does not exist. Give {_ACCEPTED}.")
    if path.is_dir():
        return FolderSource(path)
    return _from_files([os.fspath(path)], text)


def _expand(text: str) -> list[str]:
    expanded = os.path.expanduser(text)
    if os.path.exists(expanded) or not _GLOB_CHARS.search(text):
        if not os.path.exists(expanded):
            raise ValueError(f"image source {text!r} does not exist. Give {_ACCEPTED}.")
        return [expanded]
    import glob

    matches = sorted(glob.glob(expanded, recursive=True))
    if not matches:
        raise ValueError(f"no files match {text!r}; check the pattern (e.g. 'shards/*.tar')")
    return matches


def _from_files(paths: list[str], described: str) -> ImageSource:
    if any(os.path.isdir(p) for p in paths):
        if len(paths) == 1:
            return FolderSource(paths[0])
        dirs = [p for p in paths if os.path.isdir(p)]
        raise ValueError(
            f"{described} names folder(s) such as {dirs[0]!r} among several paths; give one folder, "
            f"or only .tar shards, or only image files"
        )
    compressed = [p for p in paths if _is_compressed_tar(p)]
    if compressed:
        raise ValueError(
            f"{compressed[0]} is a compressed tar; members are read by offset, so shards must be plain "
            f"uncompressed .tar files (unpack it, or re-create it with `tar cf`)"
        )
    tars = [p for p in paths if _is_tar(p)]
    if tars:
        if len(tars) != len(paths):
            other = next(p for p in paths if not _is_tar(p))
            raise ValueError(f"{described} mixes .tar shards with other files (e.g. {other!r}); give only .tar shards")
        return TarSource(tars, root=described if len(tars) > 1 else None)
    if all(_has_image_extension(p) for p in paths):
        return ListSource.from_paths(paths, root=described)
    if len(paths) == 1:
        if paths[0].lower().endswith(".csv"):
            raise ValueError(
                f"{paths[0]!r}: CSV is not read; write a list file (.txt or .lst) with one image "
                f"path a line and an optional tab-separated label"
            )
        return ListSource.from_list_file(paths[0])
    other = next(p for p in paths if not _has_image_extension(p))
    raise ValueError(
        f"{described}: {other!r} is neither an image nor a .tar shard; a list of paths must be all "
        f".tar shards or all image files"
    )
