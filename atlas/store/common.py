"""What every artifact file shares: version stamp, settings hash, atomic writes, kind checks."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py

ATLAS_VERSION = "0.1.0"
STRING_DTYPE = h5py.string_dtype("utf-8")


class ArtifactError(ValueError):
    """An artifact file that is missing, of the wrong kind, or from other settings."""


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-serialisable settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def stamp(f: h5py.File | h5py.Group, kind: str, settings: Mapping[str, Any], **attrs: Any) -> None:
    """Write the attributes every artifact carries: version, kind, settings and their hash."""
    f.attrs["atlas_version"] = ATLAS_VERSION
    f.attrs["kind"] = kind
    f.attrs["settings_json"] = json.dumps(settings, sort_keys=True, default=str)
    f.attrs["settings_hash"] = settings_hash(settings)
    for k, v in attrs.items():
        f.attrs[k] = v


def read_settings(f: h5py.File | h5py.Group) -> dict[str, Any]:
    return json.loads(f.attrs.get("settings_json", "{}"))


def is_current(path: str | os.PathLike, kind: str, settings: Mapping[str, Any]) -> bool:
    """True when ``path`` is a complete artifact of ``kind`` made with exactly ``settings``."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (
                f.attrs.get("kind") == kind
                and bool(f.attrs.get("complete", False))
                and f.attrs.get("settings_hash") == settings_hash(settings)
            )
    except OSError:
        return False


def open_artifact(path: str | os.PathLike, kind: str, stage: str | None = None) -> h5py.File:
    """Open an artifact for reading, checking that it exists, is HDF5, is ``kind`` and complete.

    ``stage`` names the command that writes the file (e.g. ``"grid"``), so that the errors say
    ``atlas grid`` instead of "its stage".
    """
    path = Path(path)
    run = f"`atlas {stage}`" if stage else f"the stage that writes the {kind} file"
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; run {run} first")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        rerun = f"`atlas {stage}`" if stage else "its stage"
        raise ArtifactError(f"{path} is not a readable HDF5 file ({e}); delete it and rerun {rerun}") from e
    found = f.attrs.get("kind")
    if found != kind:
        f.close()
        raise ArtifactError(f"{path} holds {found!r}, not {kind!r}: check the file name")
    if not f.attrs.get("complete", False):
        f.close()
        raise ArtifactError(f"{path} is incomplete (its stage was interrupted); rerun {run} to finish it")
    return f


@contextmanager
def atomic_h5(path: str | os.PathLike, mode: str = "w") -> Iterator[h5py.File]:
    """Write an HDF5 file under a temporary name and rename it into place on success.

    A crash (even SIGKILL) leaves either the old file or nothing at ``path``, never half a file;
    the temporary file is removed when the block raises.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
