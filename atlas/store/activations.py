"""``activations.h5``: what the collect stage writes, and how every later stage reads it.

Layout (``N_img`` images in the source, ``N`` rows of a layer, ``C`` channels, ``k`` top classes,
``K`` classes)::

    /                       attrs: atlas_version, kind="activations", model, layers (list),
                                   source, n_images, n_skipped, top_k, settings_json,
                                   settings_hash, artifact_id (see atlas.store.lineage),
                                   complete (bool)
    /images/key             (N_img,)   utf-8   path of each image (or "shard.tar::member"); a file
                                               name that is not UTF-8 is stored as its own bytes
                                               (read back by :func:`decode_key`)
    /images/label           (N_img,)   int32   ImageNet class index if known, else -1
    /images/status          (N_img,)   uint8   0 = used; else a skip reason (attrs "reasons": JSON)
    /layers/<L>             attrs: n_rows, channels, grid_shape (H, W), sampling; a token layer
                                   also token_layout (e.g. "cls+14x14") and skipped_tokens (the
                                   leading class/register tokens, not collected as positions)
    /layers/<L>/activations (N, C)     float16 (or float32) activation vector of one position
    /layers/<L>/image_index (N,)       int64   row -> /images index
    /layers/<L>/position    (N, 2)     int16   (y, x) in the layer's H x W grid
    /layers/<L>/attribution/top_classes (N, k) int16    classes by attribution, descending
    /layers/<L>/attribution/top_values  (N, k) float32  attribution_c = h . d logit_c / d h
    /layers/<L>/attribution/full        (N, K) float16  only with full attribution on

Rows are ordered by image index, then by sampled position. Row-aligned datasets are chunked
along rows (up to 1024 rows a chunk) with ``maxshape=(None, ...)``.

Crash safety: while collect runs, each block of images is written to its own small file in
``<output>.parts/`` under a temporary name and renamed into place when complete, so a killed
run (SIGKILL included) loses at most the block in flight and never leaves a half-written row
behind. When every block is there, :func:`finalize` streams the parts into the final file
(itself written atomically) and removes the parts folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atlas.store.common import (
    STRING_DTYPE,
    ArtifactError,
    SettingsChangedError,
    atomic_h5,
    open_artifact,
    settings_diff,
    settings_hash,
    stamp,
)
from atlas.store.layout import read_rows
from atlas.store.lineage import ID_ATTR, new_id

log = logging.getLogger(__name__)

KIND = "activations"
ROW_FIELDS = ("activations", "image_index", "position", "attribution/top_classes", "attribution/top_values")
_PART = re.compile(r"part-(\d{8})\.h5$")


@dataclass(frozen=True)
class LayerSpec:
    """Shape facts of one collected layer: ``channels`` and the spatial ``grid_shape`` (H, W).

    A token layer (a vision transformer's (T, C) output) also has ``token_layout`` (e.g.
    ``"cls+14x14"``, :meth:`atlas.models.tokens.TokenLayout.describe`) and ``skipped_tokens``, the
    leading special tokens (class, registers) that are not positions of the grid and are not
    collected; both are None for a (C, H, W) layer.
    """

    name: str
    channels: int
    grid_shape: tuple[int, int]
    token_layout: str | None = None
    skipped_tokens: int | None = None

    def token_attrs(self) -> dict[str, Any]:
        """The HDF5 attributes that say how a token layer's positions were read (none for a
        (C, H, W) layer)."""
        if self.token_layout is None:
            return {}
        return {"token_layout": self.token_layout, "skipped_tokens": int(self.skipped_tokens or 0)}


def parts_dir_for(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".parts")


class PartStore:
    """The folder of per-block part files of an unfinished collect.

    ``settings.json`` in the folder records the settings; a folder left by a run with other
    settings is refused rather than mixed in.
    """

    def __init__(self, output: str | os.PathLike, settings: Mapping[str, Any]):
        self.dir = parts_dir_for(output)
        self.settings = dict(settings)
        self.hash = settings_hash(settings)

    def open(self, overwrite: bool = False) -> None:
        meta = self.dir / "settings.json"
        if self.dir.exists() and overwrite:
            shutil.rmtree(self.dir)
        if meta.exists():
            doc = json.loads(meta.read_text())
            found = doc.get("settings_hash")
            if found != self.hash:
                changes = settings_diff(doc.get("settings", {}), self.settings) or {"settings_hash": (found, self.hash)}
                raise SettingsChangedError(self.dir, "collect", changes, partial=True)
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings_hash": self.hash, "settings": self.settings}, default=str))
        os.replace(tmp, meta)

    def statuses(self, n_blocks: int) -> np.ndarray:
        """The status column of blocks ``0 .. n_blocks - 1`` (every one must be done), in image order."""
        parts = []
        for block in range(n_blocks):
            with h5py.File(self.part_path(block), "r") as f:
                parts.append(f["status"][:])
        return np.concatenate(parts) if parts else np.zeros(0, np.uint8)

    def done_blocks(self) -> set[int]:
        if not self.dir.is_dir():
            return set()
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _PART.match(p.name))}

    def part_path(self, block: int) -> Path:
        return self.dir / f"part-{block:08d}.h5"

    def write(
        self,
        block: int,
        image_start: int,
        status: np.ndarray,
        rows: Mapping[str, Mapping[str, np.ndarray]],
    ) -> None:
        """Atomically write one block: ``status`` (n_images,) uint8 and per-layer row arrays."""
        with atomic_h5(self.part_path(block)) as f:
            f.attrs["block"] = block
            f.attrs["image_start"] = image_start
            f.attrs["settings_hash"] = self.hash
            f.create_dataset("status", data=np.asarray(status, np.uint8))
            for layer, fields in rows.items():
                g = f.create_group(f"layers/{layer}")
                for name, arr in fields.items():
                    g.create_dataset(name, data=arr)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def encode_key(key: str) -> bytes:
    """The bytes stored for an image key: its UTF-8, where a file name's bytes that are not UTF-8
    (held in the str as surrogate escapes, as ``os.listdir`` gives them) are stored as they are."""
    return key.encode("utf-8", "surrogateescape")


def decode_key(raw: bytes | str) -> str:
    """A stored image key back as the str that opens the same file (``os.fsencode(key)`` gives the
    name's bytes again)."""
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)


def finalize(
    output: str | os.PathLike,
    parts: PartStore,
    *,
    n_blocks: int,
    layers: Sequence[LayerSpec],
    image_keys: Sequence[str],
    image_labels: np.ndarray,
    settings: Mapping[str, Any],
    attrs: Mapping[str, Any],
    reasons: Mapping[str, int],
    chunk_rows: int = 1024,
) -> dict[str, int]:
    """Join every part into ``output`` (streamed: one part in memory at a time).

    Returns the number of rows per layer. Raises :class:`ArtifactError` when a block is missing.
    """
    missing = sorted(set(range(n_blocks)) - parts.done_blocks())
    if missing:
        raise ArtifactError(f"cannot finalize {output}: blocks {missing[:10]} are missing; rerun collect")
    paths = [parts.part_path(b) for b in range(n_blocks)]
    n_rows = {spec.name: 0 for spec in layers}
    dtypes: dict[tuple[str, str], tuple[np.dtype, tuple[int, ...]]] = {}
    for p in paths:
        with h5py.File(p, "r") as f:
            for spec in layers:
                g = f[f"layers/{spec.name}"]
                n_rows[spec.name] += g["image_index"].shape[0]
                for name in _fields(g):
                    dtypes[(spec.name, name)] = (g[name].dtype, g[name].shape[1:])
    n_images = len(image_keys)
    status = np.zeros(n_images, np.uint8)
    with atomic_h5(output) as out:
        stamp(out, KIND, settings, **attrs)
        out.attrs["layers"] = [spec.name for spec in layers]
        out.attrs["complete"] = False
        img = out.create_group("images")
        img.create_dataset("key", data=np.array([encode_key(k) for k in image_keys], dtype=object),
                           dtype=STRING_DTYPE)
        img.create_dataset("label", data=np.asarray(image_labels, np.int32))
        for spec in layers:
            g = out.create_group(f"layers/{spec.name}")
            g.attrs.update(n_rows=n_rows[spec.name], channels=spec.channels, grid_shape=spec.grid_shape,
                           **spec.token_attrs())
            for (layer, name), (dtype, tail) in dtypes.items():
                if layer == spec.name:
                    n = n_rows[spec.name]
                    g.create_dataset(name, shape=(n, *tail), dtype=dtype, maxshape=(None, *tail),
                                     chunks=(max(1, min(chunk_rows, n)), *tail) if n else None)
        offsets = dict.fromkeys(n_rows, 0)
        for p in paths:
            with h5py.File(p, "r") as f:
                start = int(f.attrs["image_start"])
                s = f["status"][:]
                status[start:start + len(s)] = s
                for spec in layers:
                    g = f[f"layers/{spec.name}"]
                    n = g["image_index"].shape[0]
                    o = offsets[spec.name]
                    for name in _fields(g):
                        out[f"layers/{spec.name}/{name}"][o:o + n] = g[name][:]
                    offsets[spec.name] = o + n
        st = img.create_dataset("status", data=status)
        st.attrs["reasons"] = json.dumps(dict(reasons))
        out.attrs["n_skipped"] = int((status != 0).sum())
        out.attrs[ID_ATTR] = new_id()
        out.attrs["complete"] = True
    parts.remove()
    return n_rows


def _fields(g: h5py.Group) -> list[str]:
    names: list[str] = []
    g.visit(lambda n: names.append(n) if isinstance(g[n], h5py.Dataset) else None)
    return names


class ActivationsFile:
    """Read access to a complete ``activations.h5``.

    >>> with ActivationsFile("runs/demo/activations.h5") as acts:   # doctest: +SKIP
    ...     x = acts.read("inception4c", "activations", 0, 1000)   # (1000, 512) float16
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = open_artifact(self.path, KIND)

    def __enter__(self) -> ActivationsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    @property
    def file(self) -> h5py.File:
        return self._f

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self._f.attrs

    @property
    def model(self) -> str:
        return str(self._f.attrs["model"])

    @property
    def layers(self) -> list[str]:
        return [str(x) for x in self._f.attrs["layers"]]

    def layer(self, name: str | None = None) -> str:
        """Resolve a layer name; ``None`` means the only layer (an error when there are several)."""
        layers = self.layers
        if name is None:
            if len(layers) != 1:
                raise ArtifactError(f"{self.path} has layers {layers}; say which one with --layer")
            return layers[0]
        if name not in layers:
            raise ArtifactError(f"{self.path} has no layer {name!r}; it has {layers}")
        return name

    def spec(self, layer: str | None = None) -> LayerSpec:
        layer = self.layer(layer)
        a = self._f[f"layers/{layer}"].attrs
        tokens = str(a["token_layout"]) if "token_layout" in a else None
        return LayerSpec(layer, int(a["channels"]), tuple(int(v) for v in a["grid_shape"]), tokens,
                         int(a["skipped_tokens"]) if tokens is not None else None)

    def n_rows(self, layer: str | None = None) -> int:
        return int(self._f[f"layers/{self.layer(layer)}"].attrs["n_rows"])

    @property
    def n_images(self) -> int:
        return int(self._f["images/key"].shape[0])

    def dataset(self, layer: str | None, name: str) -> h5py.Dataset:
        return self._f[f"layers/{self.layer(layer)}/{name}"]

    def has(self, layer: str | None, name: str) -> bool:
        """Whether the layer holds the dataset ``name`` (e.g. ``"attribution/top_classes"``, which a
        collect without attribution leaves out)."""
        return name in self._f[f"layers/{self.layer(layer)}"]

    def read(self, layer: str | None, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one row-aligned dataset (e.g. ``"activations"``)."""
        stop = self.n_rows(layer) if stop is None else min(stop, self.n_rows(layer))
        return self.dataset(layer, name)[start:stop]

    def read_rows(self, layer: str | None, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows ``ids`` (strictly increasing) of one row-aligned dataset, in ``ids`` order
        (:func:`atlas.store.layout.read_rows`: bounded memory whatever the file size)."""
        return read_rows(self.dataset(layer, name), ids)

    def iter_chunks(self, layer: str | None, name: str, chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` over a dataset in chunks of ``chunk_rows``; bounded memory."""
        n = self.n_rows(layer)
        ds = self.dataset(layer, name)
        for start in range(0, n, chunk_rows):
            yield start, ds[start:min(n, start + chunk_rows)]

    def image_keys(self) -> list[str]:
        return [decode_key(k) for k in self._f["images/key"][:]]

    def image_labels(self) -> np.ndarray:
        return self._f["images/label"][:]

    def image_status(self) -> np.ndarray:
        return self._f["images/status"][:]

    def skip_reasons(self) -> dict[str, int]:
        return json.loads(self._f["images/status"].attrs["reasons"])

    def skip_counts(self) -> dict[str, int]:
        """How many images were skipped for each reason, e.g. ``{"unreadable": 2}`` (reasons that
        skipped none are left out; a code without a stored name is counted under the code)."""
        names = {code: name for name, code in self.skip_reasons().items()}
        status = self.image_status()
        codes, counts = np.unique(status[status != 0], return_counts=True)
        return {names.get(int(c), str(c)): int(n) for c, n in zip(codes, counts)}


@dataclass(frozen=True)
class RowOrigins:
    """Where each row of one layer was taken: its image and its position in the layer's grid."""

    image_index: np.ndarray  # (N,) int64: row -> image
    position: np.ndarray  # (N, 2) int16: (y, x) in the layer's grid
    grid_shape: tuple[int, int]  # (H, W) of the layer
    keys: np.ndarray  # (N_img,) str: image keys (names that are not UTF-8 as surrogate escapes)
    source: str  # the ``source`` attribute: where the images were read from
    settings_json: str  # the collect settings, as stored


def read_row_origins(path: str | os.PathLike, layer: str) -> RowOrigins:
    """The :class:`RowOrigins` of ``layer`` in an ``activations.h5`` (complete or not: what the
    tiles stage needs to cut dataset-example thumbnails from the photos).

    Raises :class:`ArtifactError` when the file has no such layer.
    """
    with h5py.File(path, "r") as f:
        if f"layers/{layer}" not in f:
            raise ArtifactError(f"{path} has no layer {layer!r} (has {list(f.get('layers', {}))})")
        g = f[f"layers/{layer}"]
        h, w = (int(v) for v in g.attrs["grid_shape"])
        return RowOrigins(
            image_index=g["image_index"][:],
            position=g["position"][:],
            grid_shape=(h, w),
            keys=f["images/key"].asstr(errors="surrogateescape")[:],
            source=str(f.attrs.get("source", "")),
            settings_json=str(f.attrs.get("settings_json", "{}")),
        )
