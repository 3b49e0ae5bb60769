"""What every artifact file shares: version stamp, settings hash, atomic writes, kind checks, and
the errors a stage raises instead of replacing finished work (:class:`SettingsChangedError`) or
building on an out-of-date input (:class:`StaleInputError`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ATLAS_VERSION = "0.1.0"
STRING_DTYPE = h5py.string_dtype("utf-8")


class ArtifactError(ValueError):
    """An artifact file that is missing, of the wrong kind, or from other settings."""


#: Shown for a setting that one side of a comparison does not have.
NOT_SET = "(not set)"


class SettingsChangedError(ArtifactError):
    """A stage was asked for other settings than those its existing output was made with.

    Nothing was changed. ``changes`` maps each changed setting to ``(old, new)`` (a missing one is
    :data:`NOT_SET`); ``stage`` is the command that writes ``path``; ``partial`` is True when the
    output is an unfinished run. The message names the changes and the ways forward: keep the old
    settings, write a new run folder, or overwrite (``--overwrite``, ``overwrite=True``).
    """

    def __init__(self, path: str | os.PathLike, stage: str, changes: Mapping[str, tuple[Any, Any]], *,
                 partial: bool = False, ways: str | None = None):
        self.path = Path(path)
        self.stage = stage
        self.changes = dict(changes)
        self.partial = partial
        self.ways = ways or self.stage_ways()
        super().__init__(f"{self.summary()}; nothing was changed. {self.ways}")

    def summary(self) -> str:
        changes = describe_changes(self.changes)
        if self.partial:
            return f"{self.path} holds a partial {self.stage} made with other settings ({changes})"
        return f"{self.path} was made by {self.stage} with other settings ({changes})"

    def stage_ways(self) -> str:
        old = ", ".join(f"{k}={_show(o)}" for k, (o, _n) in self.changes.items())
        done = "finish it" if self.partial else "keep it"
        return (f"To go on: rerun with the old settings ({old}) to {done}, write into a new run folder "
                f"(another run folder or -o/--output), or pass --overwrite (overwrite=True) to replace it"
                f"{self._later()}")

    def _later(self) -> str:
        if self.stage in ("tiles",):
            return ""
        return f"; the stages after {self.stage} then rebuild from the new output"

    def for_config(self, config: str | os.PathLike, keys: Mapping[str, str] | None = None) -> SettingsChangedError:
        """The same error with the ways forward of ``atlas run CONFIG``; ``keys`` name the config
        key of each changed setting (e.g. ``{"n_neighbors": "[reduce] n_neighbors"}``)."""
        keys = keys or {}
        old = ", ".join(f"{keys.get(k, k)} = {_show(o)}" for k, (o, _n) in self.changes.items())
        ways = (f"To go on: keep the old values in {config} ({old}), set [run] dir to a new folder, or run "
                f"`atlas run {config} --overwrite` to replace it{self._later()}")
        return SettingsChangedError(self.path, self.stage, self.changes, partial=self.partial, ways=ways)


class StaleInputError(ArtifactError):
    """A stage's input was made from files that changed since: its stage must run again first."""


def plain_attr(v: Any) -> Any:
    """An HDF5 attribute as a plain Python value (arrays as lists, numpy scalars as numbers,
    bytes as text), e.g. for JSON."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def _show(value: Any, width: int = 60) -> str:
    text = value if value is NOT_SET else (repr(value) if isinstance(value, str) else
                                           json.dumps(value, default=str))
    return text if len(text) <= width else text[:width - 3] + "..."


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``"n_neighbors: 5 -> 7; min_dist: 0.01 -> 0.1"``."""
    return "; ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, (o, n) in changes.items())


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any],
                  ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """The settings that differ, ``{key: (old, new)}``, nested tables as dotted keys
    (``collect.top_k``); both sides compared as JSON, so a tuple equals the list it was stored as."""
    a, b = _flat(_as_json(old)), _flat(_as_json(new))
    out = {}
    for key in [*a, *(k for k in b if k not in a)]:
        if key in ignore:
            continue
        va, vb = a.get(key, NOT_SET), b.get(key, NOT_SET)
        if va != vb:
            out[key] = (va, vb)
    return out


def _as_json(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
