"""A folder of images as a source (:class:`FolderSource`, walked recursively), and the photo files of
a folder in the same order (:func:`list_photos`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from atlas.data.labels import infer_label
from atlas.data.sources.base import (
    _ACCEPTED,
    IMAGE_EXTENSIONS,
    EmptySourceError,
    ImageRef,
    ImageSource,
    PathLike,
    _has_image_extension,
)

log = logging.getLogger("atlas.data.sources")


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
