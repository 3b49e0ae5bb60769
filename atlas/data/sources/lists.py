"""Images named by path as a source (:class:`ListSource`): a list file, one path (and an optional
label) a line, or paths given directly."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from atlas.data.labels import infer_label, parse_label
from atlas.data.sources.base import _ACCEPTED, EmptySourceError, ImageRef, ImageSource, PathLike


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
