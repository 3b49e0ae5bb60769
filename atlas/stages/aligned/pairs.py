"""The rows of the two sides of an aligned atlas, and the check that they are pairs: row ``i`` of
one side is row ``i`` of the other (the same photo, the same position).

Two layers of one ``activations.h5`` are pairs when their grids have the same shape (collect draws
the positions of photo ``i`` from ``(seed, i)`` and the grid: InceptionV1's ``inception4a`` ...
``inception4e`` are all 14 x 14). Two models' activations are pairs when they were collected from
the same photos with the same collect settings at layers of the same grid shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atlas.store.activations import read_row_origins


class RowsMismatchError(ValueError):
    """The two sides' rows are not the same photos at the same positions; the message says what differs."""


@dataclass(frozen=True)
class SideRows:
    """Where one side's rows are: a layer of an ``activations.h5``.

    Attributes:
        key: ``"a"`` or ``"b"``.
        activations: the file.
        layer: the layer.
        label: how the side is shown (model, weights and layer), e.g. ``"inceptionv1 · inception4a"``.
    """

    key: str
    activations: Path
    layer: str
    label: str = ""

    def describe(self) -> str:
        return f"side {self.key} ({self.layer} in {self.activations})"


def check_rows_line_up(a: SideRows, b: SideRows) -> int:
    """The number of rows of each side, when row ``i`` of ``a`` is the same photo and position as
    row ``i`` of ``b``; else :class:`RowsMismatchError` naming the first thing that differs (the
    number of rows, the photos, a row's photo, a row's position)."""
    oa, ob = read_row_origins(a.activations, a.layer), read_row_origins(b.activations, b.layer)

    def refuse(what: str) -> RowsMismatchError:
        return RowsMismatchError(
            f"the rows of {a.describe()} and {b.describe()} do not line up: {what}. An aligned atlas needs row i "
            "of one side to be row i of the other: the same photos, the same positions (collect both with the "
            "same source and collect settings, at layers whose grids have the same shape)")

    if len(oa.keys) != len(ob.keys):
        raise refuse(f"they were collected from {len(oa.keys)} and {len(ob.keys)} photos "
                     f"({oa.source!r} and {ob.source!r})")
    differ = np.flatnonzero(oa.keys != ob.keys)
    if len(differ):
        i = int(differ[0])
        raise refuse(f"{len(differ)} photos differ, the first is photo {i}: {oa.keys[i]!r} on side {a.key}, "
                     f"{ob.keys[i]!r} on side {b.key}")
    if len(oa.image_index) != len(ob.image_index):
        grids = _grids(a, oa.grid_shape, b, ob.grid_shape)
        raise refuse(f"side {a.key} has {len(oa.image_index)} rows, side {b.key} {len(ob.image_index)}{grids}")
    differ = np.flatnonzero(oa.image_index != ob.image_index)
    if len(differ):
        i = int(differ[0])
        raise refuse(f"row {i} is of photo {int(oa.image_index[i])} on side {a.key} and of photo "
                     f"{int(ob.image_index[i])} on side {b.key} (photos skipped on one side only?)")
    differ = np.flatnonzero((oa.position != ob.position).any(axis=1))
    if len(differ):
        i = int(differ[0])
        pa, pb = tuple(int(v) for v in oa.position[i]), tuple(int(v) for v in ob.position[i])
        raise refuse(f"{len(differ)} rows are at other positions, the first is row {i}: {pa} on side {a.key}, "
                     f"{pb} on side {b.key}{_grids(a, oa.grid_shape, b, ob.grid_shape)}")
    return len(oa.image_index)


def _grids(a: SideRows, ga: tuple[int, int], b: SideRows, gb: tuple[int, int]) -> str:
    if ga == gb:
        return " (the collect settings differ: sampling, positions, seed or edge margin)"
    return (f" (the layers' grids differ: {a.layer} is {ga[0]} x {ga[1]}, {b.layer} {gb[0]} x {gb[1]}; "
            "pick two layers of the same grid shape)")


def read_image_index(path: str | os.PathLike, layer: str) -> np.ndarray:
    """``(N,)`` int64: the photo of each row of ``layer``."""
    return read_row_origins(path, layer).image_index


__all__ = ["RowsMismatchError", "SideRows", "check_rows_line_up", "read_image_index"]
