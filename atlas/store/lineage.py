"""Where an artifact came from, and whether it is still what its inputs would give.

Every artifact gets an identity when it is written: ``artifact_id``, a fresh random id (a rewrite
gets a new one, even with the same settings). Each artifact also records the artifacts it was
made from, in ``inputs_json``::

    {"layout": {"path": "layout.h5", "kind": "layout", "id": "5f0c...", "settings_hash": "9a1e..."}}

(``path`` relative to the artifact's folder, so a run folder can be moved or copied). An input
whose ``artifact_id`` is no longer the recorded one *changed* since: the artifact is out of date.
The chain is checked upstream (:func:`chain_problems`): cells made from a layout that was
rewritten since are out of date, and so is everything made from those cells.

Files written before these attributes existed record no inputs; their inputs are then compared
by settings hash only (what their settings recorded: ``source_settings_hash`` of a layout,
``layout_settings_hash`` of cells, ``cells_settings_hash`` of icons), and when that cannot tell,
the input is *unknown*: a warning, never an error.

:func:`check_output` is what a stage asks before it writes: is the existing output current,
partial (resume it), stale (its inputs changed: make it again) or made with other settings
(:class:`~atlas.store.common.SettingsChangedError`, unless ``overwrite``)?
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import h5py

from atlas.store.common import SettingsChangedError, StaleInputError, plain_attr, settings_diff, settings_hash

log = logging.getLogger(__name__)

ID_ATTR = "artifact_id"
INPUTS_ATTR = "inputs_json"
#: The command that writes each kind of artifact.
STAGE_OF = {"activations": "collect", "layout": "reduce", "cells": "grid", "icons": "render"}
#: Inputs of files that record none (older versions): (input name, attr with its path, settings key of its hash).
LEGACY_INPUTS = {
    "layout": (("activations", "source", "source_settings_hash"),),
    "cells": (("activations", "source", None), ("layout", "layout", "layout_settings_hash")),
    "icons": (("cells", "cells", "cells_settings_hash"),),
}

InputState = Literal["current", "changed", "unknown", "missing"]
T = TypeVar("T")

_warned: set[str] = set()


def new_id() -> str:
    """A fresh artifact identity."""
    return uuid.uuid4().hex[:16]


def root_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """The root attributes of an HDF5 file as plain Python values, or None (missing, unreadable)."""
    path = Path(path)
    if not path.is_file():
        return None
    for attempt in range(20):
        try:
            with h5py.File(path, "r") as f:
                return {k: plain_attr(v) for k, v in f.attrs.items()}
        except OSError as e:  # a writer holding the lock (a render mid-batch): wait a moment
            if "lock" not in str(e).lower() or attempt == 19:
                return None
            time.sleep(0.1)
    return None


def input_record(path: str | os.PathLike, owner: str | os.PathLike) -> dict[str, Any]:
    """What ``owner`` records of its input ``path``: where it is (relative to ``owner``'s folder),
    its kind, identity and settings hash."""
    path, owner = Path(path).absolute(), Path(owner).absolute()
    attrs = root_attrs(path) or {}
    return {"path": os.path.relpath(path, owner.parent), "kind": attrs.get("kind"), "id": attrs.get(ID_ATTR),
            "settings_hash": attrs.get("settings_hash")}


def record_inputs(obj: h5py.File | h5py.Group, owner: str | os.PathLike,
                  inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Store ``inputs`` ({name: path}) in ``obj``'s attributes as the artifact's inputs."""
    obj.attrs[INPUTS_ATTR] = json.dumps({name: input_record(p, owner) for name, p in inputs.items() if p is not None},
                                        sort_keys=True)


def recorded_inputs(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The inputs an artifact recorded, or None when it records none (an older version)."""
    raw = attrs.get(INPUTS_ATTR)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def compare_input(record: Mapping[str, Any] | None, now: Mapping[str, Any] | None,
                  legacy_hash: str | None = None) -> InputState:
    """Is the input that ``record`` describes still the file whose attributes are ``now``?

    ``record`` None: the artifact records no inputs (an older version); ``legacy_hash`` is then
    the input's settings hash as the artifact's settings recorded it, if they did.
    """
    if now is None:
        return "missing"
    if record is None:
        if legacy_hash and now.get("settings_hash") and legacy_hash != now.get("settings_hash"):
            return "changed"
        return "unknown"
    rid, cid = record.get("id"), now.get(ID_ATTR)
    if rid or cid:
        return "current" if rid == cid else "changed"
    rh, ch = record.get("settings_hash"), now.get("settings_hash")
    if rh and ch and rh != ch:
        return "changed"
    return "unknown"


@dataclass
class InputCheck:
    """One input of an artifact, as it is now."""

    name: str
    owner: Path
    owner_kind: str
    path: Path | None
    state: InputState

    def problem(self) -> str:
        fix = STAGE_OF.get(self.owner_kind, "")
        run = f"; run `atlas {fix}` first" if fix else ""
        name = self.path.name if self.path else self.name
        return f"{self.owner} is out of date: {name} changed since it was made{run}"


def _resolve(owner: Path, recorded: str | None, *, legacy: bool = False) -> Path | None:
    """The file a recorded input path means: relative to the owner's folder (older files: the
    path as it was given), else the file of that name beside the owner."""
    if recorded:
        p = Path(recorded)
        for cand in ((p, owner.parent / p) if legacy else (owner.parent / p,)):
            if cand.is_file():
                return cand
        beside = owner.parent / p.name
        if beside.is_file():
            return beside
    return None


def check_inputs(path: str | os.PathLike, attrs: Mapping[str, Any] | None = None) -> list[InputCheck]:
    """Each input of the artifact ``path`` (recorded, or for older files, from its attributes)
    and whether it changed since the artifact was made."""
    path = Path(path)
    attrs = root_attrs(path) if attrs is None else attrs
    if attrs is None:
        return []
    out = []
    kind = str(attrs.get("kind"))
    recorded = recorded_inputs(attrs)
    if recorded is not None:
        for name, rec in recorded.items():
            p = _resolve(path, rec.get("path"))
            out.append(InputCheck(name, path, kind, p, compare_input(rec, None if p is None else root_attrs(p))))
        return out
    settings = read_settings_attrs(attrs)
    for name, attr, key in LEGACY_INPUTS.get(kind, ()):
        p = _resolve(path, attrs.get(attr), legacy=True)
        legacy = (settings.get(key) or attrs.get(key)) if key else None
        state = compare_input(None, None if p is None else root_attrs(p), legacy)
        out.append(InputCheck(name, path, kind, p, "unknown" if state == "missing" else state))
    return out


def read_settings_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(attrs.get("settings_json", "{}"))
    except ValueError:
        return {}


def chain_problems(path: str | os.PathLike, _seen: set[Path] | None = None) -> tuple[list[str], list[str]]:
    """Walk the inputs of ``path`` upstream: ``(problems, unknowns)``.

    A problem names an artifact whose input changed since it was made and the command to run;
    an unknown names an input that cannot be checked (an older version's file, or a file gone).
    """
    seen = set() if _seen is None else _seen
    path = Path(path).absolute()
    if path in seen:
        return [], []
    seen.add(path)
    problems: list[str] = []
    unknowns: list[str] = []
    for check in check_inputs(path):
        if check.path is not None:  # upstream first: the first problem names the first stage to run
            p, u = chain_problems(check.path, seen)
            problems += [x for x in p if x not in problems]
            unknowns += [x for x in u if x not in unknowns]
        if check.state == "changed":
            problems.append(check.problem())
        elif check.state in ("unknown", "missing"):
            what = "is missing" if check.state == "missing" else "cannot be checked (made by an older version)"
            unknowns.append(f"{check.name} input of {path} {what}")
    return problems, unknowns


def require_current(*paths: str | os.PathLike) -> None:
    """Raise :class:`StaleInputError` when one of ``paths`` (inputs a stage is about to read) or
    anything upstream of them was made from inputs that changed since; warn about inputs that
    cannot be checked."""
    problems: list[str] = []
    unknowns: list[str] = []
    for path in paths:
        p, u = chain_problems(path)
        problems += [x for x in p if x not in problems]
        unknowns += [x for x in u if x not in unknowns]
    if problems:
        raise StaleInputError("; ".join(problems))
    warn_unknown(unknowns)


def warn_unknown(unknowns: list[str]) -> None:
    """Log each unknown once per process."""
    for u in unknowns:
        if u not in _warned:
            _warned.add(u)
            log.warning("%s; assuming it is current (rebuild it to be sure)", u)


@dataclass
class Existing:
    """What is at a stage's output path, compared with what the stage is asked for.

    ``state``: ``"none"`` (nothing usable there), ``"current"`` (complete, same settings and
    inputs), ``"partial"`` (unfinished with the same settings and inputs: resume it),
    ``"stale"`` (same settings but its inputs changed since: make it again; ``reasons`` say
    which), ``"replace"`` (``overwrite`` was asked).
    """

    state: Literal["none", "current", "partial", "stale", "replace"]
    attrs: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def refuse_other_settings(path: str | os.PathLike, attrs: Mapping[str, Any], settings: Mapping[str, Any], *,
                          stage: str, input_keys: tuple[str, ...] = ()) -> bool:
    """Raise :class:`SettingsChangedError` when the artifact ``path`` (its attributes ``attrs``)
    was made with other ``settings``, ``input_keys`` (entries that describe inputs) aside.
    Returns whether its settings hash differs at all: True when only the input entries did."""
    if attrs.get("settings_hash") == settings_hash(settings):
        return False
    changes = settings_diff(read_settings_attrs(attrs), settings, ignore=input_keys)
    if changes:
        raise SettingsChangedError(path, stage, changes, partial=not bool(attrs.get("complete", False)))
    return True


def check_output(path: str | os.PathLike, kind: str, settings: Mapping[str, Any], *, stage: str,
                 inputs: Mapping[str, str | os.PathLike] | None = None, input_keys: tuple[str, ...] = (),
                 overwrite: bool = False) -> Existing:
    """Compare the artifact at ``path`` with ``settings`` and ``inputs`` ({name: path now}).

    ``input_keys`` are the entries of ``settings`` that describe inputs (an upstream settings
    hash): when only they differ, the inputs changed, not the settings. Raises
    :class:`SettingsChangedError` when the other settings differ, unless ``overwrite``.
    """
    path = Path(path)
    attrs = root_attrs(path)
    if attrs is None:
        if path.exists():
            log.warning("%s is unreadable; it will be rebuilt", path)
        return Existing("none")
    if attrs.get("kind") != kind:
        return Existing("none", attrs)
    if overwrite:
        return Existing("replace", attrs)
    complete = bool(attrs.get("complete", False))
    reasons = []
    if refuse_other_settings(path, attrs, settings, stage=stage, input_keys=input_keys):
        reasons.append("the settings of its inputs changed")
    recorded = recorded_inputs(attrs)
    unknown = []
    for name, p in (inputs or {}).items():
        state = compare_input(None if recorded is None else recorded.get(name), root_attrs(p))
        if state == "changed":
            reasons.append(f"{Path(p).name} changed since it was made")
        elif state == "unknown" and recorded is None:
            unknown.append(f"{name} input of {path} cannot be checked (made by an older version)")
    if reasons:
        return Existing("stale", attrs, reasons)
    warn_unknown(unknown)
    return Existing("current" if complete else "partial", attrs)


def keep_or_replace(call: Callable[[bool], T], overwrite: bool) -> T:
    """``call(False)``; when it raises :class:`SettingsChangedError` and ``overwrite`` is given,
    ``call(True)`` (replace the output whose settings changed), else the error."""
    try:
        return call(False)
    except SettingsChangedError as e:
        if not overwrite:
            raise
        log.warning("%s; replacing it (overwrite)", e.summary())
        return call(True)


__all__ = ["ID_ATTR", "INPUTS_ATTR", "STAGE_OF", "Existing", "InputCheck", "chain_problems", "check_inputs",
           "check_output", "compare_input", "input_record", "keep_or_replace", "new_id", "record_inputs",
           "recorded_inputs", "refuse_other_settings", "require_current", "root_attrs", "warn_unknown"]
