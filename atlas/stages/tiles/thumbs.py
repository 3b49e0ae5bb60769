"""Dataset-example thumbnails: the window of each photo the model saw around a sampled position."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from atlas.stages.tiles.files import write_atomic
from atlas.stages.tiles.inputs import Level
from atlas.stages.tiles.settings import TilesError, TileSettings
from atlas.store.activations import read_row_origins
from atlas.store.common import ArtifactError
from atlas.store.lineage import root_attrs

log = logging.getLogger("atlas.stages.tiles")


@dataclass(frozen=True)
class ModelView:
    """How the model saw a photo: resize (shorter side, or both sides), then centre crop."""

    resize: int | None
    crop: int | None
    keep_aspect: bool = True

    @classmethod
    def from_settings(cls, settings_json: str) -> ModelView:
        try:
            text = str(json.loads(settings_json or "{}").get("image_transform", ""))
        except (TypeError, ValueError):
            text = ""
        found = {k: v for k, v in re.findall(r"(\w+)=(\w+)", text)}
        try:
            return cls(int(found["resize"]), int(found["crop"]), found.get("keep_aspect", "True") == "True")
        except (KeyError, ValueError):
            return cls(None, None)

    def window(self, width: int, height: int, cy: float, cx: float, fraction: float) -> tuple[float, float, float, float]:
        """Box (left, top, right, bottom) in the original photo around relative crop position (cy, cx)."""
        if self.resize is None or self.crop is None:
            side = min(width, height)  # unknown transform: a centred square crop
            sx = sy = 1.0
            w_r, h_r, crop = width, height, side
        else:
            if self.keep_aspect:
                s = self.resize / min(width, height)
                w_r, h_r = max(self.resize, round(width * s)), max(self.resize, round(height * s))
            else:
                w_r, h_r = self.resize, self.resize
            sx, sy, crop = w_r / width, h_r / height, self.crop
        left0, top0 = (w_r - crop) // 2, (h_r - crop) // 2
        half = fraction * crop / 2
        x = min(max(cx * crop, half), crop - half)
        y = min(max(cy * crop, half), crop - half)
        return ((left0 + x - half) / sx, (top0 + y - half) / sy, (left0 + x + half) / sx, (top0 + y + half) / sy)


class ImageReader:
    """Encoded bytes of the collected photos, by their key in ``activations.h5``.

    Uses the collect stage's own reader (:func:`atlas.data.open_source` on the stored
    ``source``) when the source can be reopened; otherwise reads keys as paths (absolute, or
    relative to the source folder / the list file's folder) and ``shard.tar::member`` keys with
    :mod:`tarfile`.
    """

    def __init__(self, source: str):
        self.source = source
        base = Path(source)
        self.base = base if base.is_dir() else base.parent  # a list file, a shard or a glob
        self._src: Any = None
        self._tars: OrderedDict[Path, tarfile.TarFile] = OrderedDict()
        try:
            from atlas.data import open_source

            self._src = open_source(source)
        except (ImportError, ValueError, OSError) as e:
            log.info("reading photos by path (could not reopen the source %r: %s)", source, e)

    def read(self, key: str) -> bytes:
        if self._src is not None:
            try:
                return self._src.read_bytes(key)
            except KeyError:
                pass  # not a key of the reopened source (it changed): try the path
        if "::" in key:
            shard, member = key.split("::", 1)
            path = Path(shard) if Path(shard).is_absolute() else self.base / shard
            tar = self._tars.get(path)
            if tar is None:
                tar = self._tars[path] = tarfile.open(path)
                if len(self._tars) > 4:
                    self._tars.popitem(last=False)[1].close()
            try:
                fobj = tar.extractfile(member)
            except KeyError as e:
                raise OSError(f"no member {member!r} in {path}") from e
            if fobj is None:
                raise OSError(f"{member!r} in {path} is not a file")
            return fobj.read()
        path = Path(key)
        return (path if path.is_absolute() else self.base / key).read_bytes()

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()
        if self._src is not None and hasattr(self._src, "close"):
            self._src.close()


def thumb_path(out: Path, row: int) -> Path:
    return out / "thumbs" / str(row // 1000) / f"{row}.jpg"


def thumb_url(row: int) -> str:
    return f"thumbs/{row // 1000}/{row}.jpg"


def existing_thumbs(out: Path) -> set[int]:
    """Rows whose thumbnail file exists (one directory listing per 1000 rows, not a stat per row)."""
    found: set[int] = set()
    try:
        shards = [e for e in os.scandir(out / "thumbs") if e.is_dir() and e.name.isdigit()]
    except FileNotFoundError:
        return found
    for shard in shards:
        for entry in os.scandir(shard.path):
            stem, _, ext = entry.name.partition(".")
            if ext == "jpg" and stem.isdigit():
                found.add(int(stem))
    return found


def make_thumbs(
    activations_path: Path, layer: str, rows: np.ndarray, out: Path, settings: TileSettings, progress: bool
) -> tuple[int, int]:
    """Write missing thumbnails of layer ``rows``; returns (written, failed images)."""
    try:
        origins = read_row_origins(activations_path, layer)
    except ArtifactError as e:
        raise TilesError(f"{e}; pass the activations.h5 the cells were made from") from e
    image_index, position, keys, source = origins.image_index, origins.position, origins.keys, origins.source
    grid_h, grid_w = origins.grid_shape
    view = ModelView.from_settings(origins.settings_json)
    rows = rows[(rows >= 0) & (rows < len(image_index))]
    existing = existing_thumbs(out)
    todo = np.array([r for r in rows.tolist() if r not in existing], dtype=np.int64)
    if not len(todo):
        return 0, 0
    images = image_index[todo]
    order = np.argsort(images, kind="stable")  # decode every photo once for all its rows
    todo, images = todo[order], images[order]
    bounds = np.flatnonzero(np.diff(images)) + 1
    written = failed = 0
    size = settings.thumb_size
    reader = ImageReader(source)
    try:
        with tqdm(total=len(todo), desc="thumbnails", unit="img", disable=not progress) as bar:
            for group in np.split(np.arange(len(todo)), bounds):
                img_id = int(images[group[0]])
                try:
                    img = Image.open(io.BytesIO(reader.read(str(keys[img_id]))))
                    width, height = img.size
                    img.draft("RGB", (max(size * 4, width // 8), max(size * 4, height // 8)))
                    img = img.convert("RGB")
                except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:
                    failed += 1
                    if failed <= 5:
                        log.warning("no thumbnail for image %d (%s): %s", img_id, keys[img_id], e)
                    bar.update(len(group))
                    continue
                fx, fy = img.size[0] / width, img.size[1] / height
                for j in group:
                    row = int(todo[j])
                    y, x = position[row]
                    l, t, r, b = view.window(width, height, (y + 0.5) / grid_h, (x + 0.5) / grid_w, settings.thumb_fraction)
                    thumb = img.resize((size, size), Image.Resampling.BICUBIC, box=(l * fx, t * fy, r * fx, b * fy))
                    buf = io.BytesIO()
                    thumb.save(buf, "JPEG", quality=85)
                    path = thumb_path(out, row)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(path, buf.getvalue())
                    written += 1
                bar.update(len(group))
    finally:
        reader.close()
    if failed:
        log.warning("%d photos could not be read for thumbnails (source %s); their examples show no picture",
                    failed, source)
    return written, failed


def write_thumbs(
    out: Path, activations_path: Path, layer: str, levels: list[Level], settings: TileSettings,
    state: dict[str, Any], progress: bool,
) -> tuple[int, int, set[int], dict[str, str]]:
    """Thumbnails of every listed example; returns (written, failed photos, rows with one, source info)."""
    if not activations_path.is_file():
        raise TilesError(f"{activations_path} does not exist; pass the collect stage's activations.h5 "
                         "or leave activations_path out (no example thumbnails)")
    key = json.dumps([settings.thumb_size, settings.thumb_fraction, str(activations_path.resolve())])
    if state.get("thumbs") != key and (out / "thumbs").exists():
        shutil.rmtree(out / "thumbs")
    rows = np.unique(np.concatenate([lv.example_rows[:, :settings.examples_per_cell].ravel() for lv in levels]))
    written, failed = make_thumbs(activations_path, layer, rows[rows >= 0], out, settings, progress)
    state["thumbs"] = key
    attrs = root_attrs(activations_path) or {}
    info = {"settings_hash": str(attrs.get("settings_hash", "")), "source": str(attrs.get("source", ""))}
    return written, failed, existing_thumbs(out), info


__all__ = ["existing_thumbs", "ImageReader", "make_thumbs", "ModelView", "thumb_path", "thumb_url", "write_thumbs"]
