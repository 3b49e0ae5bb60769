"""``layout.h5``: the 2-D position of every row of one layer, written by the reduce stage.

Layout (``M`` laid-out rows: all ``N`` rows of the layer, or the rows a class filter selected;
``F`` distinct rows the UMAP was fitted on)::

    /                     attrs: atlas_version, kind="layout", model, layer, source (path of
                                 activations.h5), source_settings_hash, settings_json,
                                 settings_hash, complete (bool), n_rows (M),
                                 n_rows_done (committed rows of raw_xy/status),
                                 n_placed, n_nonfinite, n_zero, n_fit, n_fit_duplicates,
                                 norm_lo (2,), norm_hi (2,)  (see atlas.stages.reduce.normalize_layout),
                                 class_index (int, -1 = every row), class_name (str),
                                 inputs_json, artifact_id (see atlas.store.lineage);
                                 one side of an aligned atlas also: aligned (its name),
                                 aligned_side ("a" or "b"), maps (its maps.h5, relative)
    /row_ids              (M,)   int64    row of the layer that each layout row is
                                          (``arange(N)`` for a full atlas)
    /raw_xy               (M, 2) float32  UMAP coordinates before normalisation; NaN where
                                          not placed (status 1)
    /status               (M,)   uint8    0 placed; 1 non-finite activations (skipped);
                                          2 all-zero activations (cosine undefined; put at
                                          the centroid of the placed rows, not binned)
    /valid                (M,)   bool     status == 0: the rows the grid stage bins
    /xy                   (M, 2) float32  positions in [0, 1], column 0 = x, column 1 = y;
                                          NaN where status == 1; written when complete
    /fit/row_ids          (F,)   int64    layer rows the UMAP was fitted on (one per
                                          distinct row of the sample)
    /fit/embedding        (F, 2) float32  their raw UMAP coordinates
    /fit/sample_row_ids   (S,)   int64    every sampled row (duplicates included), sorted
    /fit/sample_embedding (S, 2) float32  their raw coordinates (a duplicate takes its twin's)

Crash safety: ``raw_xy`` and ``status`` are written chunk by chunk and ``n_rows_done`` is raised
only after the rows below it are flushed, so a killed reduce resumes from ``n_rows_done``.
The fitted model is pickled beside the file (:func:`model_path`) before placement starts, so a
resume never refits; without the pickle, the fit rows and their embedding in ``/fit`` are
enough to place new rows by nearest neighbours (:func:`atlas.stages.reduce.load_placer`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atlas.store.common import ArtifactError, open_artifact, plain_attr, stamp
from atlas.store.lineage import ID_ATTR, INPUTS_ATTR, input_record, new_id

log = logging.getLogger(__name__)

KIND = "layout"

#: Row status codes of ``/status``.
PLACED, NONFINITE, ZERO = 0, 1, 2
STATUS_NAMES = {PLACED: "placed", NONFINITE: "non-finite", ZERO: "all-zero"}


def model_path(layout_path: str | os.PathLike) -> Path:
    """Where the pickled fitted model of ``layout_path`` lives: ``layout.h5`` -> ``layout.umap.pkl``."""
    p = Path(layout_path)
    return p.with_name(p.stem + ".umap.pkl")


@dataclass
class Layout:
    """A complete ``layout.h5`` in memory (``M`` rows; a few tens of MB for a million rows)."""

    path: Path
    xy: np.ndarray  # (M, 2) float32 in [0, 1], x then y; NaN where status == NONFINITE
    valid: np.ndarray  # (M,) bool
    status: np.ndarray  # (M,) uint8
    row_ids: np.ndarray  # (M,) int64 rows of the layer
    attrs: dict[str, Any]

    @property
    def layer(self) -> str:
        return str(self.attrs["layer"])

    @property
    def model(self) -> str:
        return str(self.attrs.get("model", ""))

    @property
    def settings(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("settings_json", "{}"))


def read_layout(path: str | os.PathLike) -> Layout:
    """Load a complete ``layout.h5``; :class:`ArtifactError` names the fix when it is not one."""
    with open_artifact(path, KIND) as f:
        return Layout(
            path=Path(path),
            xy=f["xy"][:],
            valid=f["valid"][:],
            status=f["status"][:],
            row_ids=f["row_ids"][:],
            attrs={k: plain_attr(v) for k, v in f.attrs.items()},
        )


def read_fit(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_row_ids (F,) int64, fit_embedding (F, 2) float32)`` of a layout (complete or not)."""
    with h5py.File(path, "r") as f:
        if "fit/row_ids" not in f:
            raise ArtifactError(f"{path} holds no fit yet; rerun reduce to finish it")
        return f["fit/row_ids"][:], f["fit/embedding"][:]


def read_rows(dataset: h5py.Dataset, ids: np.ndarray, block_rows: int = 65536) -> np.ndarray:
    """Rows ``ids`` (sorted ascending, int) of a row-aligned dataset, in ``ids`` order.

    A contiguous run is one slice read; scattered ids are read a window of ``block_rows``
    rows at a time (one slab read when the window is dense enough, h5py point selection when
    it is sparse), so memory stays at one window whatever the file size.
    """
    ids = np.asarray(ids, np.int64)
    tail = dataset.shape[1:]
    if len(ids) == 0:
        return np.empty((0, *tail), dataset.dtype)
    if np.any(np.diff(ids) <= 0):
        raise ValueError("read_rows needs strictly increasing row ids; sort and deduplicate them first")
    lo, hi = int(ids[0]), int(ids[-1]) + 1
    if hi - lo == len(ids):
        return dataset[lo:hi]
    out = np.empty((len(ids), *tail), dataset.dtype)
    i = 0
    while i < len(ids):
        start = int(ids[i])
        j = int(np.searchsorted(ids, start + block_rows, side="left"))
        window = ids[i:j]
        if len(window) * 16 >= block_rows or len(window) == int(window[-1]) - start + 1:
            out[i:j] = dataset[start:int(window[-1]) + 1][window - start]
        else:
            out[i:j] = dataset[window]
        i = j
    return out


class LayoutWriter:
    """Create or reopen an incomplete ``layout.h5`` and fill it chunk by chunk.

    >>> w = LayoutWriter.create(path, row_ids, settings, attrs)       # doctest: +SKIP
    >>> w.write_fit(fit_ids, fit_emb, sample_ids, sample_emb, n_dup)   # doctest: +SKIP
    >>> w.write_rows(start, raw_xy, status); w.commit(stop)            # doctest: +SKIP
    >>> w.finish(xy, lo, hi); w.close()                                # doctest: +SKIP
    """

    def __init__(self, f: h5py.File):
        self.f = f

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        row_ids: np.ndarray,
        settings: Mapping[str, Any],
        attrs: Mapping[str, Any],
        chunk_rows: int = 16384,
        inputs: Mapping[str, str | os.PathLike] | None = None,
    ) -> LayoutWriter:
        """A fresh file for ``len(row_ids)`` rows (any old file at ``path`` is replaced);
        ``inputs`` ({name: path}, e.g. the activations) are recorded (:mod:`atlas.store.lineage`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        recorded = {name: input_record(p, path) for name, p in (inputs or {}).items()}
        f = h5py.File(path, "w")
        stamp(f, KIND, settings, **attrs)
        f.attrs[INPUTS_ATTR] = json.dumps(recorded, sort_keys=True)
        m = len(row_ids)
        f.attrs.update(complete=False, n_rows=m, n_rows_done=0)
        chunk = max(1, min(chunk_rows, m))
        f.create_dataset("row_ids", data=np.asarray(row_ids, np.int64), chunks=(chunk,) if m else None)
        f.create_dataset("raw_xy", shape=(m, 2), dtype=np.float32, fillvalue=np.nan,
                         chunks=(chunk, 2) if m else None)
        f.create_dataset("status", shape=(m,), dtype=np.uint8, chunks=(chunk,) if m else None)
        f["status"].attrs["codes"] = json.dumps(STATUS_NAMES)
        f.flush()
        return cls(f)

    @classmethod
    def reopen(cls, path: str | os.PathLike) -> LayoutWriter:
        return cls(h5py.File(path, "r+"))

    @staticmethod
    def probe(path: str | os.PathLike) -> dict[str, Any] | None:
        """Root attrs of an existing layout file, or ``None`` when there is none (or it is unreadable)."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("kind") != KIND:
                    return None
                return {k: plain_attr(v) for k, v in f.attrs.items()}
        except OSError as e:
            log.warning("%s is unreadable (%s); it will be rebuilt", path, e)
            return None

    @property
    def n_rows(self) -> int:
        return int(self.f.attrs["n_rows"])

    @property
    def n_rows_done(self) -> int:
        return int(self.f.attrs["n_rows_done"])

    @property
    def complete(self) -> bool:
        """Whether the file is finished (:meth:`finish` ran)."""
        return bool(self.f.attrs.get("complete", False))

    @property
    def has_fit(self) -> bool:
        return "fit/embedding" in self.f

    def row_ids(self) -> np.ndarray:
        return self.f["row_ids"][:]

    def write_fit(
        self,
        fit_row_ids: np.ndarray,
        fit_embedding: np.ndarray,
        sample_row_ids: np.ndarray,
        sample_embedding: np.ndarray,
        n_duplicates: int,
    ) -> None:
        """Store the fit: its distinct rows and their embedding, and every sampled row's position."""
        if "fit" in self.f:
            del self.f["fit"]
        g = self.f.create_group("fit")
        g.create_dataset("row_ids", data=np.asarray(fit_row_ids, np.int64))
        g.create_dataset("embedding", data=np.asarray(fit_embedding, np.float32))
        g.create_dataset("sample_row_ids", data=np.asarray(sample_row_ids, np.int64))
        g.create_dataset("sample_embedding", data=np.asarray(sample_embedding, np.float32))
        self.f.attrs.update(n_fit=len(fit_row_ids), n_fit_duplicates=int(n_duplicates))
        self.f.flush()

    def read_sample(self) -> tuple[np.ndarray, np.ndarray]:
        return self.f["fit/sample_row_ids"][:], self.f["fit/sample_embedding"][:]

    def write_rows(self, start: int, raw_xy: np.ndarray, status: np.ndarray) -> None:
        """Write placed rows ``start:start+len(raw_xy)`` (not yet counted as done)."""
        stop = start + len(raw_xy)
        self.f["raw_xy"][start:stop] = raw_xy
        self.f["status"][start:stop] = status

    def commit(self, n_rows_done: int) -> None:
        """Flush, then count the rows below ``n_rows_done`` as done."""
        self.f.flush()
        self.f.attrs["n_rows_done"] = int(n_rows_done)
        self.f.flush()

    def read_raw(self) -> tuple[np.ndarray, np.ndarray]:
        return self.f["raw_xy"][:], self.f["status"][:]

    def finish(self, xy: np.ndarray, status: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> dict[str, int]:
        """Write ``xy`` (M, 2) in [0, 1], ``valid`` and the counts; mark the file complete."""
        for name in ("xy", "valid"):
            if name in self.f:
                del self.f[name]
        m = len(xy)
        chunk = (max(1, min(16384, m)),) if m else None
        self.f.create_dataset("xy", data=np.asarray(xy, np.float32), chunks=(chunk[0], 2) if m else None)
        self.f.create_dataset("valid", data=status == PLACED, chunks=chunk)
        counts = {
            "n_placed": int((status == PLACED).sum()),
            "n_nonfinite": int((status == NONFINITE).sum()),
            "n_zero": int((status == ZERO).sum()),
        }
        self.f.attrs.update(norm_lo=np.asarray(lo, np.float64), norm_hi=np.asarray(hi, np.float64), **counts)
        self.f.attrs[ID_ATTR] = new_id()
        self.f.flush()
        self.f.attrs["complete"] = True
        self.f.flush()
        return counts

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> LayoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
