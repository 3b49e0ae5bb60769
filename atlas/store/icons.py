"""``icons.h5``: the feature-visualization icon of every atlas cell, written by the render stage.

Layout (``M`` cells of a level, rows aligned with the same level of ``cells.h5``; ``S`` the icon
side)::

    /                         attrs: atlas_version, kind="icons", model, layer, cells (path of
                                     cells.h5), cells_settings_hash, sizes (list of int),
                                     icon_size (S), steps, attempts, lr, cossim_pow, seed,
                                     whiten (bool), transforms (text), start ("cold" or
                                     "parent": finer levels start from their parents' icons),
                                     refine_steps, refine_lr (steps and learning rate of
                                     those; 0 for "cold"), settings_json,
                                     settings_hash, inputs_json, artifact_id (see
                                     atlas.store.lineage; a new id after every batch),
                                     complete (bool)
    /levels/<size>            attrs: size, n_cells (M), n_done, cells_digest (of the cells the
                                     level is rendered from, atlas.store.cells.level_digest)
    /levels/<size>/cell_id    (M,)        int32    copied from cells.h5 (iy * size + ix)
    /levels/<size>/icons      (M, S, S, 3) uint8   RGB icon; zeros until done
    /levels/<size>/done       (M,)        bool     True once the row's icon is written
    /levels/<size>/objective  (M,)        float32  objective value of the kept attempt
                                                   (NaN until done)
    /levels/<size>/cossim     (M,)        float32  cosine between the icon's activation (center
                                                   position) and the cell direction (NaN until done)

Crash safety: rows are written in batches; each batch writes its icons and values, flushes,
then sets their ``done`` flags and flushes again, so a row counts as done only once its icon is
on disk. The file is opened only while a batch is written, so readers (the tiles stage) can
look at a render in progress. ``complete`` is set once every row of every level is done.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atlas.store.common import ArtifactError, read_settings, stamp
from atlas.store.lineage import ID_ATTR, new_id, record_inputs, refuse_other_settings, root_attrs

__all__ = ["KIND", "IconLevel", "IconLevelState", "IconsFile", "check_settings", "icons_settings", "read_icon_rows",
           "read_icon_state", "read_icons"]

log = logging.getLogger(__name__)

KIND = "icons"


@dataclass
class IconLevel:
    """The icons of one grid size (shapes in the module docstring)."""

    size: int
    cell_id: np.ndarray
    icons: np.ndarray
    done: np.ndarray
    objective: np.ndarray
    cossim: np.ndarray

    def __len__(self) -> int:
        return len(self.cell_id)


class IconsFile:
    """Writer of ``icons.h5`` that keeps the icons still valid.

    ``IconsFile.prepare(path, levels, icon_size, settings, attrs, digests=...)`` creates the file,
    or opens an existing one made with the same settings and keeps every level whose cells are
    the same (``cells_digest``, see :func:`atlas.store.cells.level_digest`): levels new to the
    grid are added, levels whose cells changed are emptied for rendering again, levels the grid
    no longer has are dropped. A file of other settings is left as it is and
    :class:`~atlas.store.common.SettingsChangedError` names the changes, unless ``overwrite``.
    """

    def __init__(self, path: Path, icon_size: int):
        self.path = path
        self.icon_size = icon_size

    @classmethod
    def prepare(
        cls,
        path: str | os.PathLike,
        levels: Mapping[int, np.ndarray],
        icon_size: int,
        settings: Mapping[str, Any],
        attrs: Mapping[str, Any],
        *,
        digests: Mapping[int, str] | None = None,
        inputs: Mapping[str, str | os.PathLike] | None = None,
        overwrite: bool = False,
    ) -> IconsFile:
        """Open ``path`` for rendering ``levels`` ({size: cell_id (M,)}) with ``settings``;
        ``digests`` ({size: digest of the level's cells}) decide which rendered levels are kept,
        ``inputs`` ({name: path}, the cells) are recorded."""
        path = Path(path)
        digests = dict(digests or {})
        if path.exists() and not overwrite:
            reason = _unusable(path)
            if reason is None:
                check_settings(path, settings)
                cls._update(path, levels, icon_size, settings, attrs, digests, inputs or {})
                return cls(path, icon_size)
            log.warning("%s: %s; rendering all icons again", path, reason)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as f:
                stamp(f, KIND, settings, **attrs)
                f.attrs["sizes"] = [int(s) for s in levels]
                f.attrs["icon_size"] = int(icon_size)
                f.attrs["complete"] = False
                record_inputs(f, path, inputs or {})
                f.attrs[ID_ATTR] = new_id()
                for size, cell_id in levels.items():
                    _create_level(f, size, cell_id, icon_size, digests.get(size))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return cls(path, icon_size)

    @staticmethod
    def _update(path: Path, levels: Mapping[int, np.ndarray], icon_size: int, settings: Mapping[str, Any],
                attrs: Mapping[str, Any], digests: Mapping[int, str], inputs: Mapping[str, str | os.PathLike]) -> None:
        """Keep the levels of an existing file (same settings) whose cells are unchanged; add,
        empty or drop the others; record the settings and inputs of now."""
        with h5py.File(path, "r+") as f:
            old_cells = read_settings(f).get("cells_settings_hash")
            same_cells = old_cells is not None and old_cells == settings.get("cells_settings_hash")
            changed = False
            for size, cell_id in levels.items():
                key = f"levels/{size}"
                if key in f:
                    g = f[key]
                    digest = g.attrs.get("cells_digest")
                    if digest is not None:
                        keep = digest == digests.get(size)
                    else:  # an older version's file: the same cells if they had the same hash and ids
                        keep = same_cells and np.array_equal(g["cell_id"][:], np.asarray(cell_id, np.int32))
                    if keep and g["icons"].shape[1:] == (icon_size, icon_size, 3):
                        if digest is None and size in digests:
                            g.attrs["cells_digest"] = digests[size]
                        continue
                    log.info("%s: the cells of grid %d changed since its icons were rendered; rendering them again",
                             path, size)
                    del f[key]
                else:
                    log.info("%s: adding grid %d", path, size)
                _create_level(f, size, cell_id, icon_size, digests.get(size))
                changed = True
            for key in list(f["levels"]) if "levels" in f else []:
                if int(key) not in levels:
                    log.info("%s: dropping grid %s (no longer in the cells)", path, key)
                    del f[f"levels/{key}"]
                    changed = True
            stamp(f, KIND, settings, **attrs)
            f.attrs["sizes"] = [int(s) for s in levels]
            f.attrs["icon_size"] = int(icon_size)
            f.attrs["complete"] = all(bool(f[f"levels/{s}/done"][:].all()) for s in levels)
            record_inputs(f, path, inputs)
            if changed or ID_ATTR not in f.attrs:
                f.attrs[ID_ATTR] = new_id()
        log.info("resuming the render in %s", path)

    def pending(self, size: int) -> np.ndarray:
        """Row indices (ascending) of level ``size`` whose icon is not done yet."""
        with h5py.File(self.path, "r") as f:
            return np.flatnonzero(~f[f"levels/{size}/done"][:])

    def write(self, size: int, rows: np.ndarray, icons: np.ndarray, objective: np.ndarray,
              cossim: np.ndarray) -> None:
        """Store the icons (B, S, S, 3) uint8 of ``rows`` (ascending) of level ``size``, then mark them done."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return
        if np.any(np.diff(rows) <= 0):
            raise ValueError("rows must be strictly increasing")
        with h5py.File(self.path, "r+") as f:
            g = f[f"levels/{size}"]
            g["icons"][rows] = icons
            g["objective"][rows] = np.asarray(objective, np.float32)
            g["cossim"][rows] = np.asarray(cossim, np.float32)
            f.flush()
            done = g["done"]
            done[rows] = True
            g.attrs["n_done"] = int(done[:].sum())
            f.attrs[ID_ATTR] = new_id()  # other icons: what was made from this file is out of date
            f.flush()

    def finish(self) -> bool:
        """Set ``complete`` when every row of every level is done; returns it."""
        with h5py.File(self.path, "r+") as f:
            complete = all(bool(f[f"levels/{s}/done"][:].all()) for s in f.attrs["sizes"])
            f.attrs["complete"] = complete
        return complete


def _create_level(f: h5py.File, size: int, cell_id: np.ndarray, icon_size: int, digest: str | None) -> None:
    m, s = len(cell_id), icon_size
    g = f.create_group(f"levels/{size}")
    g.attrs.update(size=int(size), n_cells=m, n_done=0)
    if digest is not None:
        g.attrs["cells_digest"] = digest
    g.create_dataset("cell_id", data=np.asarray(cell_id, np.int32))
    # a level that kept no cell is an empty dataset (HDF5 chunks cannot exceed it)
    packed = dict(chunks=(min(m, 16), s, s, 3), compression="gzip", compression_opts=1) if m else {}
    ds = g.create_dataset("icons", shape=(m, s, s, 3), dtype=np.uint8, fillvalue=0, **packed)
    ds.attrs["meaning"] = "RGB icon of each cell, rows aligned with cells.h5; zeros until done"
    g.create_dataset("done", data=np.zeros(m, bool))
    g.create_dataset("objective", data=np.full(m, np.nan, np.float32))
    g.create_dataset("cossim", data=np.full(m, np.nan, np.float32))


#: Entries of the render settings that describe the input (the cells), not the rendering.
INPUT_KEYS = ("cells_settings_hash",)


def check_settings(path: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Raise :class:`SettingsChangedError` when the icons at ``path`` were rendered with other
    settings than ``settings`` (the cells they were rendered from aside)."""
    attrs = root_attrs(path)
    if attrs is None:
        raise ArtifactError(f"{path} cannot be read; delete it and render again")
    refuse_other_settings(path, attrs, settings, stage="render", input_keys=INPUT_KEYS)


def _unusable(path: Path) -> str | None:
    """Why an existing file cannot be kept at all, or None when it can."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != KIND:
                return f"it holds {f.attrs.get('kind')!r}, not icons"
            if "levels" not in f:
                return "it holds no levels"
    except OSError as e:
        return f"it cannot be read ({e})"
    return None


def read_icons(path: str | os.PathLike, sizes: Sequence[int] | None = None) -> dict[int, IconLevel]:
    """Load the icons of ``icons.h5`` (all levels, or ``sizes``); a render in progress is allowed
    (check ``done``)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; run `atlas render` first")
    with h5py.File(path, "r") as f:
        if f.attrs.get("kind") != KIND:
            raise ArtifactError(f"{path} holds {f.attrs.get('kind')!r}, not 'icons': check the file name")
        have = [int(s) for s in f.attrs["sizes"]]
        want = have if sizes is None else [int(s) for s in sizes]
        missing = sorted(set(want) - set(have))
        if missing:
            raise ArtifactError(f"{path} has grid sizes {have}, not {missing}; render those levels first")
        out = {}
        for s in want:
            g = f[f"levels/{s}"]
            out[s] = IconLevel(size=s, cell_id=g["cell_id"][:], icons=g["icons"][:], done=g["done"][:],
                               objective=g["objective"][:], cossim=g["cossim"][:])
        return out


def icons_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings an ``icons.h5`` was rendered with (decoded ``settings_json``)."""
    with h5py.File(path, "r") as f:
        return read_settings(f)


# ------------------------------------------------------------- reading a render in progress
# The tiles stage reads icons while a render may still be writing them: the file is opened per
# read, never held open, and an open waits while the writer holds the file's lock (mid-batch).


def _open_when_free(path: str | os.PathLike, tries: int = 100, wait: float = 0.1) -> h5py.File:
    """Open an HDF5 file for reading, waiting while a writer holds its lock (a render mid-batch)."""
    for attempt in range(tries):
        try:
            return h5py.File(path, "r")
        except OSError as e:
            if "lock" not in str(e).lower():
                raise ArtifactError(f"{path} is not a readable HDF5 file ({e}); rerun the stage that writes it") from e
            if attempt == tries - 1:
                raise ArtifactError(f"{path} stayed locked by another process for {tries * wait:.0f} s "
                                    "(a render writing?); run the tiles stage again in a moment") from e
            time.sleep(wait)
    raise AssertionError("unreachable")


@dataclass
class IconLevelState:
    """One level of an ``icons.h5``, its icons left on disk: their dataset's ``shape``
    ``(M, S, S, 3)``, the ``cell_id`` they were rendered for (None in a file without them) and
    the ``done`` flags as of now."""

    shape: tuple[int, ...]
    cell_id: np.ndarray | None
    done: np.ndarray


def read_icon_state(path: str | os.PathLike, sizes: Sequence[int]) -> tuple[dict[str, Any], dict[int, IconLevelState | None]]:
    """The root attributes of ``icons.h5`` (a render in progress is fine; nothing is checked) and
    the :class:`IconLevelState` of each of ``sizes`` (None where the file has no icons or done
    flags for that size yet).

    Raises :class:`ArtifactError` when the file cannot be read, or stays locked by its writer.
    """
    with _open_when_free(path) as f:
        attrs = dict(f.attrs)
        levels: dict[int, IconLevelState | None] = {}
        for size in sizes:
            key = f"levels/{size}"
            if key not in f or "icons" not in f[key] or "done" not in f[key]:
                levels[size] = None
                continue
            g = f[key]
            levels[size] = IconLevelState(shape=tuple(g["icons"].shape),
                                          cell_id=g["cell_id"][:] if "cell_id" in g else None,
                                          done=g["done"][:])
    return attrs, levels


def read_icon_rows(path: str | os.PathLike, size: int, start: int, stop: int) -> np.ndarray:
    """Icons ``start:stop`` (rows of level ``size``) of ``icons.h5``, done or not (zeros until
    done); the file is open only for this read. Raises :class:`ArtifactError` as
    :func:`read_icon_state`."""
    with _open_when_free(path) as f:
        return f[f"levels/{size}/icons"][start:stop]
