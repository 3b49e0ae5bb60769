"""Channel-icon caches: a feature visualization of every channel of one layer, filled lazily.

One file per model (its weights), layer and render settings, named
``channels-<model>-<layer>-<settings hash>.h5`` under a cache folder (``C`` channels, ``S`` the
icon side)::

    /            attrs: atlas_version, kind="channel_icons", model, layer, model_fingerprint,
                        n_channels (C), icon_size (S), steps, lr, seed, transforms (text),
                        settings_json, settings_hash, complete (bool)
    /icons       (C, S, S, 3) uint8    RGB icon of channel c; zeros until done
    /done        (C,)         bool     True once channel c's icon is written
    /objective   (C,)         float32  the channel's mean activation on its icon (NaN until done)

Crash safety as :mod:`atlas.store.icons`: a batch writes its icons and values, flushes, then
sets their ``done`` flags and flushes again, so a killed fill keeps every finished batch and a
rerun renders only what is missing. ``complete`` is set once every channel is done.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atlas.store.common import ArtifactError, settings_hash, stamp

__all__ = ["KIND", "ChannelIconCache", "ChannelIcons", "cache_file_name", "read_channel_icons"]

log = logging.getLogger(__name__)

KIND = "channel_icons"


def cache_file_name(model: str, layer: str, settings: Mapping[str, Any]) -> str:
    """``channels-<model>-<layer>-<hash of settings>.h5``, with unsafe characters replaced."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{layer}")
    return f"channels-{safe}-{settings_hash(settings)}.h5"


@dataclass
class ChannelIcons:
    """The contents of a cache file (shapes in the module docstring)."""

    icons: np.ndarray
    done: np.ndarray
    objective: np.ndarray
    attrs: dict[str, Any]


class ChannelIconCache:
    """Writer of one cache file; :meth:`prepare` creates it or reopens one with the same settings."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def prepare(cls, path: str | os.PathLike, n_channels: int, icon_size: int, settings: Mapping[str, Any],
                attrs: Mapping[str, Any]) -> ChannelIconCache:
        """Open ``path`` for ``n_channels`` icons of side ``icon_size`` made with ``settings``.

        An existing file with the same settings hash and shape is kept (its done icons reused);
        anything else at ``path`` is replaced (logged).
        """
        path = Path(path)
        if path.exists():
            reason = _mismatch(path, n_channels, icon_size, settings_hash(settings))
            if reason is None:
                return cls(path)
            log.warning("%s: %s; starting the cache again", path, reason)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as f:
                stamp(f, KIND, settings, **attrs)
                f.attrs.update(n_channels=int(n_channels), icon_size=int(icon_size), complete=False)
                s = int(icon_size)
                ds = f.create_dataset("icons", shape=(n_channels, s, s, 3), dtype=np.uint8, fillvalue=0,
                                      chunks=(min(n_channels, 16), s, s, 3), compression="gzip", compression_opts=1)
                ds.attrs["meaning"] = "RGB feature visualization of each channel; zeros until done"
                f.create_dataset("done", data=np.zeros(n_channels, bool))
                f.create_dataset("objective", data=np.full(n_channels, np.nan, np.float32))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return cls(path)

    def done(self) -> np.ndarray:
        """(C,) bool: which channels have an icon."""
        with h5py.File(self.path, "r") as f:
            return f["done"][:]

    def write(self, channels: np.ndarray, icons: np.ndarray, objective: np.ndarray) -> None:
        """Store icons (B, S, S, 3) uint8 of ``channels`` (strictly increasing), then mark them done."""
        channels = np.asarray(channels, np.int64)
        if len(channels) == 0:
            return
        if np.any(np.diff(channels) <= 0):
            raise ValueError("channels must be strictly increasing")
        with h5py.File(self.path, "r+") as f:
            f["icons"][channels] = icons
            f["objective"][channels] = np.asarray(objective, np.float32)
            f.flush()
            f["done"][channels] = True
            f.attrs["complete"] = bool(f["done"][:].all())
            f.flush()


def _mismatch(path: Path, n_channels: int, icon_size: int, want_hash: str) -> str | None:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("kind") != KIND:
                return f"it holds {f.attrs.get('kind')!r}, not channel icons"
            if f.attrs.get("settings_hash") != want_hash:
                return "it was rendered with other settings"
            if f["icons"].shape != (n_channels, icon_size, icon_size, 3):
                return f"its icons are {f['icons'].shape}, not ({n_channels}, {icon_size}, {icon_size}, 3)"
    except (OSError, KeyError) as e:
        return f"it cannot be read ({e})"
    return None


def read_channel_icons(path: str | os.PathLike) -> ChannelIcons:
    """Load a cache file (a partly filled one too: check ``done``)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; fill it with `atlas channels PHOTO --layer LAYER`")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ArtifactError(f"{path} is not a readable HDF5 file ({e}); delete it and rerun `atlas channels`") from e
    with f:
        if f.attrs.get("kind") != KIND:
            raise ArtifactError(f"{path} holds {f.attrs.get('kind')!r}, not {KIND!r}: check the file name")
        return ChannelIcons(icons=f["icons"][:], done=f["done"][:], objective=f["objective"][:],
                            attrs=dict(f.attrs))
