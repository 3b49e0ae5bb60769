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
"""

from __future__ import annotations

import abc
import functools
import io
import logging
import os
import re
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from atlas.resources import class_index, imagenet_wnids

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "SKIP_REASONS",
    "BadImage",
    "EmptySourceError",
    "FolderSource",
    "ImageDataset",
    "ImageRef",
    "ImageSource",
    "ListSource",
    "TarSource",
    "collate_images",
    "decode_image",
    "infer_label",
    "load_image",
    "open_source",
    "reason_name",
    "to_rgb",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)

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

PathLike = Union[str, os.PathLike]
SourceSpec = Union[PathLike, Sequence[PathLike], "ImageSource"]
TargetSize = Union[tuple[int, int], Callable[[int, int], tuple[int, int]], None]

_WNID_AT_START = re.compile(r"(n\d{8})(?![0-9])")
_WNID_FOLDER = re.compile(r"n\d{8}")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ACCEPTED = (
    "a folder of images (searched recursively), a list file (one path a line, optional "
    "tab-separated label), a .tar shard, a glob like 'shards/*.tar', or a list of .tar paths"
)
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


# --------------------------------------------------------------------------------------- labels


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
            label = _parse_label(fields[1], list_path, lineno) if len(fields) > 1 and fields[1].strip() else None
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


def _parse_label(text: str, list_path: Path, lineno: int) -> int:
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


# ------------------------------------------------------------------------------------- decoding


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
