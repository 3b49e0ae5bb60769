"""``cells.h5``: the atlas grid cells at several zoom levels, written by the grid stage.

Layout (``M`` kept cells of a level, sorted by ``cell_id``; ``C`` channels; ``k`` top classes;
``E`` examples per cell)::

    /                         attrs: atlas_version, kind="cells", model, layer, source (path of
                                     activations.h5), layout (path of layout.h5),
                                     settings_json, settings_hash, complete (bool),
                                     sizes (list of int), n_rows (rows binned),
                                     inputs_json, artifact_id (see atlas.store.lineage)
    /levels/<size>            attrs: size, min_count, n_cells (M), n_rows (rows in kept cells),
                                     n_dropped_rows (rows in cells below min_count)
    /levels/<size>/cell_id        (M,)    int32    iy * size + ix (row-major; y grows downward)
    /levels/<size>/coords         (M, 2)  int32    (iy, ix)
    /levels/<size>/center         (M, 2)  float32  (y, x) in [0, 1]: mean layout position of the
                                                   cell's rows (the square's own centre is
                                                   ((iy, ix) + 0.5) / size)
    /levels/<size>/count          (M,)    int32    rows in the cell (>= min_count)
    /levels/<size>/direction      (M, C)  float32  mean activation vector of the cell's rows
    /levels/<size>/top_classes    (M, k)  int16    classes by mean attribution, descending
    /levels/<size>/top_values     (M, k)  float32  mean attribution over the cell's rows
    /levels/<size>/example_rows   (M, E)  int64    layer rows nearest the direction (cosine),
                                                   at most one per image, best first, -1 padded
    /levels/<size>/example_images (M, E)  int64    their image indices, -1 padded

The file is written under a temporary name and renamed when complete, so it is either whole or
absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from atlas.store.common import ArtifactError, atomic_h5, open_artifact, stamp
from atlas.store.lineage import ID_ATTR, new_id, record_inputs

KIND = "cells"

_FIELDS: dict[str, type] = {
    "cell_id": np.int32,
    "coords": np.int32,
    "center": np.float32,
    "count": np.int32,
    "direction": np.float32,
    "top_classes": np.int16,
    "top_values": np.float32,
    "example_rows": np.int64,
    "example_images": np.int64,
}


@dataclass
class CellLevel:
    """The kept cells of one grid size (see the module docstring for shapes and meaning)."""

    size: int
    min_count: int
    cell_id: np.ndarray
    coords: np.ndarray
    center: np.ndarray
    count: np.ndarray
    direction: np.ndarray
    top_classes: np.ndarray
    top_values: np.ndarray
    example_rows: np.ndarray
    example_images: np.ndarray
    n_dropped_rows: int = 0

    def __len__(self) -> int:
        return len(self.cell_id)


def level_digest(cell_id: np.ndarray, direction: np.ndarray) -> str:
    """A hash of what a level's icons are rendered from: its cell ids and their directions."""
    h = hashlib.blake2b(digest_size=8)
    for a in (np.asarray(cell_id, np.int32), np.asarray(direction, np.float32)):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def write_cells(
    path: str | os.PathLike,
    levels: Sequence[CellLevel],
    settings: Mapping[str, Any],
    attrs: Mapping[str, Any],
    inputs: Mapping[str, str | os.PathLike] | None = None,
) -> None:
    """Write a complete ``cells.h5`` atomically (``attrs`` adds e.g. model, layer, source;
    ``inputs`` ({name: path}) are recorded, see :mod:`atlas.store.lineage`)."""
    with atomic_h5(path) as f:
        stamp(f, KIND, settings, **attrs)
        record_inputs(f, path, inputs or {})
        f.attrs[ID_ATTR] = new_id()
        f.attrs["sizes"] = [int(lv.size) for lv in levels]
        f.attrs["complete"] = False
        for lv in levels:
            g = f.create_group(f"levels/{lv.size}")
            g.attrs.update(size=int(lv.size), min_count=int(lv.min_count), n_cells=len(lv),
                           n_rows=int(np.asarray(lv.count, np.int64).sum()),
                           n_dropped_rows=int(lv.n_dropped_rows))
            for name, dtype in _FIELDS.items():
                g.create_dataset(name, data=np.asarray(getattr(lv, name), dtype))
        f.attrs["complete"] = True


def read_cells(path: str | os.PathLike, sizes: Sequence[int] | None = None) -> dict[int, CellLevel]:
    """Load the levels of a complete ``cells.h5`` (all, or ``sizes``), keyed by grid size."""
    with open_artifact(path, KIND) as f:
        have = [int(s) for s in f.attrs["sizes"]]
        want = have if sizes is None else [int(s) for s in sizes]
        missing = sorted(set(want) - set(have))
        if missing:
            raise ValueError(f"{path} has grid sizes {have}, not {missing}; rerun grid with --sizes")
        out = {}
        for s in want:
            g = f[f"levels/{s}"]
            out[s] = CellLevel(size=s, min_count=int(g.attrs["min_count"]),
                               n_dropped_rows=int(g.attrs.get("n_dropped_rows", 0)),
                               **{name: g[name][:] for name in _FIELDS})
        return out


@dataclass
class LevelArrays:
    """Some datasets of one level of ``cells.h5``, as stored (see :func:`read_level_arrays`)."""

    size: int
    min_count: int
    arrays: dict[str, np.ndarray]


def read_level_arrays(path: str | os.PathLike, fields: Sequence[str]) -> tuple[dict[str, Any], list[LevelArrays]]:
    """The root attributes (arrays as lists) and the datasets ``fields`` of every level of a
    complete ``cells.h5``, levels in ascending size, datasets as stored (no dtype or shape
    change): what a reader that needs only some datasets loads (the tiles stage leaves out
    ``direction``).

    Raises :class:`ArtifactError` naming the fix (``atlas grid``) when the file is not a complete
    cells file, or lacks a level it lists or one of ``fields``.
    """
    with open_artifact(path, KIND, stage="grid") as f:
        if "levels" not in f:
            raise ArtifactError(f"{path} has no /levels group; rerun `atlas grid`")
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
        sizes = sorted(int(s) for s in attrs.get("sizes", [])) or sorted(int(k) for k in f["levels"])
        levels = []
        for size in sizes:
            if str(size) not in f["levels"]:
                raise ArtifactError(f"{path} lists grid size {size} but has no /levels/{size}; rerun `atlas grid`")
            g = f[f"levels/{size}"]
            try:
                arrays = {name: g[name][:] for name in fields}
            except KeyError as e:
                raise ArtifactError(f"{path} /levels/{size} lacks a dataset ({e}); rerun `atlas grid`") from e
            levels.append(LevelArrays(size, int(g.attrs.get("min_count", 1)), arrays))
    return attrs, levels


def cells_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of a complete ``cells.h5`` (settings decoded from JSON)."""
    with open_artifact(path, KIND) as f:
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    attrs["settings"] = json.loads(attrs.get("settings_json", "{}"))
    return attrs


__all__ = ["KIND", "CellLevel", "LevelArrays", "cells_attrs", "level_digest", "read_cells", "read_level_arrays",
           "write_cells"]
