"""Image sources and robust decoding for the collect stage.

Contract
--------
A *source* (:class:`ImageSource`, made by :func:`open_source`) is a fixed, ordered list of images.
Each image has an :class:`ImageRef`: ``index`` (0..N-1, stable for the same source), ``key`` (what
is shown and stored) and ``label`` (ImageNet class index, or -1 when unknown). Sources are
picklable and read lazily, so a ``torch.utils.data.DataLoader`` can read them from worker
processes.

Sources understood by :func:`open_source`:

- **a folder**: walked recursively (symlinked folders followed once), files whose extension is in
  :data:`IMAGE_EXTENSIONS` (case-insensitive) sorted by their relative POSIX path, which is also
  their ``key``. Other files and hidden entries (names starting with ``.``) are skipped and
  counted in ``source.ignored_files``. A name that is not UTF-8 (Linux names are bytes) is kept:
  its key holds the bytes as surrogate escapes, as ``os.listdir`` gives them, so
  ``os.path.join(root, key)`` opens the file (``activations.h5`` stores those bytes as they are).
- **a list file** (any text file that is not ``.csv``, e.g. ``.txt`` or ``.lst``): one path a line,
  relative paths resolved against the list file's folder, an optional tab-separated label column
  (an integer index, a WordNet id or a class name; further columns are ignored), blank lines and
  ``#`` comments skipped. Listed files that do not exist are kept: they fail at decode time with
  reason ``"missing file"``. The ``key`` is the path as written.
- **tar shards**: a ``.tar`` file, a glob such as ``"shards/*.tar"`` or a list of ``.tar`` paths.
  Shards are taken in sorted order, image members in archive order; the ``key`` is
  ``"<shard>::<member>"`` with the shard relative to the shards' common folder. Members are read
  by their stored offset, so shards must be uncompressed (as WebDataset writes them).
- a single image file, or a glob / list of image files (kept in the order given, globs sorted).

A source without a single image raises :class:`EmptySourceError` (a ``ValueError``) saying what
was searched and what is accepted; a path that does not exist raises ``ValueError``.

Labels: a WebDataset-style ``<key>.cls`` member beside a tar member, else the list file's label
column, else an ImageNet WordNet id (``n\\d{8}``, one of :func:`atlas.resources.imagenet_wnids`)
at the start of the file name (``n01440764_tench.JPEG``) or as the name of an enclosing folder
(``train/n01440764/x.jpg``; for tar shards the shard's own name counts as a folder), else -1.

Decoding and its skip reasons are in :mod:`atlas.data.decoding`, labels in :mod:`atlas.data.labels`,
reading images of a source for a ``DataLoader`` in :mod:`atlas.data.loader`.
"""

from __future__ import annotations

import abc
import io
import logging
import os
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from atlas.data.labels import infer_label, parse_label

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)

PathLike = Union[str, os.PathLike]
SourceSpec = Union[PathLike, Sequence[PathLike], "ImageSource"]

_GLOB_CHARS = re.compile(r"[*?\[]")
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


# -------------------------------------------------------------------------------------- sources


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


class FolderSource(ImageSource):
    """Every image file under a folder, recursively, sorted by relative POSIX path (the key)."""

    kind = "folder"

    def __init__(self, root: PathLike):
        path = Path(root).expanduser().absolute()
        if not path.is_dir():
            raise ValueError(f"{os.fspath(root)!r} is not a folder; give a folder of images")
        rels, ignored, examples = _walk_images(path)
        if not rels:
            seen = f"; {ignored} other file(s) were ignored, e.g. {', '.join(examples)}" if ignored else ""
            raise EmptySourceError(
                f"no images found in folder {os.fspath(root)!r} (searched recursively, hidden entries "
                f"skipped{seen}). Image files need one of the extensions "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))} (any case). Accepted sources: {_ACCEPTED}."
            )
        rels.sort()
        top = path.resolve().name  # the folder itself may be named by its class: train/n01440764/
        refs = [ImageRef(i, rel, infer_label([top, *rel.split("/")])) for i, rel in enumerate(rels)]
        super().__init__(os.fspath(path), refs, ignored)
        log.debug("%s: %d images, %d other files ignored", self.root, len(refs), ignored)

    def path(self, ref: ImageRef | str) -> str:
        return os.path.join(self.root, self._resolve(ref).key)

    def read_bytes(self, ref: ImageRef | str) -> bytes:
        return Path(self.path(ref)).read_bytes()


def _walk_images(root: Path) -> tuple[list[str], int, list[str]]:
    """(relative POSIX paths of image files, number of other files, a few of their names)."""
    rels: list[str] = []
    ignored = 0
    examples: list[str] = []
    visited: set[tuple[int, int]] = set()

    def on_error(err: OSError) -> None:
        log.warning("cannot list %s (%s); its images are left out", err.filename, err.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in visited:  # a symlink loop or a second link to a folder
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not name.startswith(".") and _has_image_extension(name):
                rels.append(rel)
            else:
                ignored += 1
                if len(examples) < 3:
                    examples.append(rel)
    return rels, ignored, examples



def list_photos(folder: PathLike, *, recursive: bool = True) -> list[Path]:
    """The photo files in ``folder``: names with an extension of :data:`IMAGE_EXTENSIONS` (any
    case), hidden entries (names starting with ``.``) skipped, sorted by their path relative to
    ``folder`` (as a POSIX string). With ``recursive`` (the default) its subfolders are searched
    too, symlinked folders followed once: the files, in the order, that a folder source
    (:class:`FolderSource`) reads. Paths are ``folder / relative path``.

    Raises ``ValueError`` when ``folder`` is not a folder.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{os.fspath(folder)!r} is not a folder; give a folder of photos")
    if recursive:
        rels = _walk_images(root)[0]
    else:
        with os.scandir(root) as entries:
            rels = [e.name for e in entries
                    if not e.name.startswith(".") and _has_image_extension(e.name) and not e.is_dir()]
    return [root / rel for rel in sorted(rels)]

class ListSource(ImageSource):
    """Images named by path: from a list file (:meth:`from_list_file`) or given directly
    (:meth:`from_paths`). Listed files are not checked for existence; a missing one fails to
    decode with reason ``"missing file"``."""

    kind = "list"

    def __init__(self, root: str, refs: Sequence[ImageRef], paths: Sequence[str]):
        if len(refs) != len(paths):
            raise ValueError(f"{len(refs)} refs but {len(paths)} paths")
        if not refs:
            raise EmptySourceError(
                f"{root!r} lists no images. A list file has one image path a line (relative to the "
                f"list file's folder), optionally a tab and a label; blank lines and lines starting "
                f"with '#' are skipped. Accepted sources: {_ACCEPTED}."
            )
        super().__init__(root, refs)
        self._paths = tuple(paths)

    @classmethod
    def from_paths(cls, paths: Iterable[PathLike], root: str | None = None) -> ListSource:
        """Images at ``paths`` in the given order; keys are the paths as given."""
        keys = [os.fspath(p) for p in paths]
        refs = [ImageRef(i, k, infer_label(k)) for i, k in enumerate(keys)]
        full = [os.path.abspath(os.path.expanduser(k)) for k in keys]
        return cls(root if root is not None else (keys[0] if len(keys) == 1 else f"{len(keys)} files"),
                   refs, full)

    @classmethod
    def from_list_file(cls, list_file: PathLike) -> ListSource:
        """Parse a list file: ``path[<TAB>label[<TAB>ignored...]]`` a line, ``#`` comments."""
        list_path = Path(list_file).expanduser().absolute()
        try:
            text = list_path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(
                f"{os.fspath(list_file)!r} is not a UTF-8 text list file (nor a folder, image or .tar). "
                f"Accepted sources: {_ACCEPTED}."
            ) from None
        base = list_path.parent
        refs: list[ImageRef] = []
        paths: list[str] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split("\t")
            key = fields[0].strip()
            if not key:
                raise ValueError(f"{list_path}:{lineno}: no path before the tab; write 'path<TAB>label'")
            label = parse_label(fields[1], list_path, lineno) if len(fields) > 1 and fields[1].strip() else None
            if label is None:
                label = infer_label(key)
            full = Path(key).expanduser()
            paths.append(os.fspath(full if full.is_absolute() else base / full))
            refs.append(ImageRef(len(refs), key, label))
        return cls(os.fspath(list_path), refs, paths)

    def path(self, ref: ImageRef | str) -> str:
        return self._paths[self._resolve(ref).index]

    def read_bytes(self, ref: ImageRef | str) -> bytes:
        with open(self.path(ref), "rb") as f:
            return f.read()


class TarSource(ImageSource):
    """Image members of uncompressed tar shards, read by offset.

    Shards are taken in sorted order and their image members in archive order. A WebDataset-style
    ``<key>.cls`` member (an integer) gives the label of the images with the same key. Each
    process opens the shards it reads on first use and keeps at most ``max_open`` of them open.
    """

    kind = "tar"

    def __init__(self, shards: Sequence[PathLike], root: str | None = None, max_open: int = 8):
        if not shards:
            raise EmptySourceError(f"no tar shards given. Accepted sources: {_ACCEPTED}.")
        shard_paths = sorted(os.path.abspath(os.path.expanduser(os.fspath(s))) for s in shards)
        for s in shard_paths:
            if _is_compressed_tar(s):
                raise ValueError(
                    f"{s} is a compressed tar; members are read by offset, so shards must be plain "
                    f"uncompressed .tar files (unpack it, or re-create it with `tar cf`)"
                )
            if not os.path.isfile(s):
                raise ValueError(f"tar shard {s!r} does not exist")
        common = os.path.commonpath([os.path.dirname(s) for s in shard_paths])
        names = [os.path.relpath(s, common).replace(os.sep, "/") for s in shard_paths]

        refs: list[ImageRef] = []
        shard_of: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        ignored = 0
        for si, (path, name) in enumerate(zip(shard_paths, names)):
            members, cls_labels, n_ignored = _scan_tar(path)
            ignored += n_ignored
            stem = name.rsplit("/", 1)[-1][: -len(".tar")]
            for member, offset, size in members:
                label = cls_labels.get(_webdataset_key(member))
                if label is None:
                    label = infer_label([stem, *member.split("/")])
                refs.append(ImageRef(len(refs), f"{name}::{member}", label))
                shard_of.append(si)
                offsets.append(offset)
                sizes.append(size)
        where = root or (shard_paths[0] if len(shard_paths) == 1 else f"{common} ({len(shard_paths)} shards)")
        if not refs:
            raise EmptySourceError(
                f"no image members in {where} ({ignored} other member(s) ignored). Image members need "
                f"one of the extensions {', '.join(sorted(IMAGE_EXTENSIONS))} (any case). "
                f"Accepted sources: {_ACCEPTED}."
            )
        super().__init__(where, refs, ignored)
        self.shards = tuple(shard_paths)
        self.max_open = max(1, int(max_open))
        self._shard_of = np.asarray(shard_of, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)
        self._reset_handles()

    def _reset_handles(self) -> None:
        self._pid = os.getpid()
        self._handles: OrderedDict[int, io.BufferedReader] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("_handles", "_lock", "_pid"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    def _handle(self, shard: int) -> io.BufferedReader:
        f = self._handles.get(shard)
        if f is not None:
            self._handles.move_to_end(shard)
            return f
        f = open(self.shards[shard], "rb")  # noqa: SIM115 -- kept open across reads, closed in close()
        self._handles[shard] = f
        while len(self._handles) > self.max_open:
            _, old = self._handles.popitem(last=False)
            old.close()
        return f

    def read_bytes(self, ref: ImageRef | str) -> bytes:
        ref = self._resolve(ref)
        i = ref.index
        shard, offset, size = int(self._shard_of[i]), int(self._offsets[i]), int(self._sizes[i])
        if os.getpid() != self._pid:  # a forked worker: the parent's handles share its file offsets
            self._reset_handles()
        with self._lock:
            f = self._handle(shard)
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise EOFError(f"{self.shards[shard]} ends {size - len(data)} bytes into member {ref.key!r}")
        return data

    def close(self) -> None:
        with self._lock:
            for f in self._handles.values():
                f.close()
            self._handles.clear()

    def __del__(self) -> None:
        handles = getattr(self, "_handles", None)
        if handles and getattr(self, "_pid", None) == os.getpid():
            for f in handles.values():
                f.close()


def _webdataset_key(member: str) -> str:
    """``dir/sample.jpg`` -> ``dir/sample`` (WebDataset: the key ends at the first dot of the name)."""
    head, _, name = member.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{head}/{stem}" if head else stem


def _scan_tar(path: str) -> tuple[list[tuple[str, int, int]], dict[str, int], int]:
    """((member, data offset, size) of image members, labels from .cls members, ignored count)."""
    members: list[tuple[str, int, int]] = []
    cls_labels: dict[str, int] = {}
    ignored = 0
    try:
        tf = tarfile.open(path, "r:")
    except tarfile.ReadError as e:
        raise ValueError(
            f"{path} is not an uncompressed tar file ({e}); shards must be plain .tar files"
        ) from None
    with tf:
        try:
            for m in tf:
                if not m.isreg():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if base.startswith("."):
                    ignored += 1
                elif _has_image_extension(base):
                    members.append((m.name, m.offset_data, m.size))
                elif base.lower().endswith(".cls") and m.size <= 32:
                    f = tf.extractfile(m)
                    text = f.read().decode("ascii", "replace").strip() if f else ""
                    if re.fullmatch(r"-?\d+", text):
                        cls_labels[_webdataset_key(m.name)] = int(text)
                    else:
                        ignored += 1
                else:
                    ignored += 1
        except (tarfile.ReadError, EOFError) as e:
            log.warning("%s: tar archive ends early after %d image members (%s); keeping those",
                        path, len(members), e)
    return members, cls_labels, ignored


def open_source(spec: SourceSpec) -> ImageSource:
    """Open a folder, list file, tar shard(s), glob or list of paths as an :class:`ImageSource`.

    See the module docstring for the accepted forms, keys and labels. An :class:`ImageSource` is
    returned as is. Raises ``ValueError`` for a path that does not exist or cannot be used, and
    :class:`EmptySourceError` (a ``ValueError``) when there is no image.
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


__all__ = ["IMAGE_EXTENSIONS", "EmptySourceError", "FolderSource", "ImageRef", "ImageSource", "ListSource", "list_photos",
           "SourceSpec", "TarSource", "open_source"]
