"""Small files the package ships: ImageNet-1k class names and WordNet ids.

The files live in the repository's top-level ``data/`` folder (see ``data/README.md``);
``atlas/resources/data`` links to it, and a wheel carries copies there, so they are read as
package data either way. ``imagenet_classes.tsv`` has one row per class in the standard
ImageNet-1k index order: ``index``, ``wnid`` (WordNet id, e.g. ``n04251144``) and a
human-readable ``name``.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files(__package__).joinpath("data", "imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    return tuple((wnid, name) for _i, wnid, name in rows)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, index order."""
    return [name for _wnid, name in _table()]


def imagenet_wnids() -> list[str]:
    """The 1000 WordNet ids (``n01440764`` ...), index order."""
    return [wnid for wnid, _name in _table()]


def class_index(name_or_wnid: str, class_names: list[str] | None = None) -> int:
    """Index of a class given by name (case-insensitive, ``_`` = space), WordNet id or number.

    Raises ``ValueError`` with close matches when nothing fits.
    """
    names = class_names if class_names is not None else imagenet_class_names()
    query = name_or_wnid.strip()
    if query.isdigit() and int(query) < len(names):
        return int(query)
    norm = query.lower().replace("_", " ")
    lowered = [n.lower() for n in names]
    if norm in lowered:
        return lowered.index(norm)
    if class_names is None and query in imagenet_wnids():
        return imagenet_wnids().index(query)
    close = difflib.get_close_matches(norm, lowered, n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(names[lowered.index(c)]) for c in close)}?" if close else ""
    raise ValueError(f"unknown class {name_or_wnid!r}.{hint} Give a class name, a WordNet id or an index.")
