"""Pickled objects of a run (the fitted reducer beside ``layout.h5``), readable across package moves.

A pickle names each object's class by module path. The package was grouped by role after runs
had been written (``atlas.reduce`` became :mod:`atlas.stages.reduce`, ``atlas.data`` a package,
...); :func:`load_pickle` maps the old paths in :data:`MOVED_MODULES` to the new ones, so a fitted
model written before the move still loads instead of being refitted. Only read pickles you wrote:
unpickling runs code named in the file.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

#: Old module path -> its home now; a path below an old package moves with it.
MOVED_MODULES: dict[str, str] = {
    "atlas.collect": "atlas.stages.collect.stage",
    "atlas.rows": "atlas.stages.collect.rows",
    "atlas.batch_decode": "atlas.stages.collect.batch_decode",
    "atlas.reduce": "atlas.stages.reduce",
    "atlas.grid": "atlas.stages.grid",
    "atlas.render": "atlas.stages.render",
    "atlas.tiles": "atlas.stages.tiles",
    "atlas.subatlas": "atlas.stages.classes",
    **{f"atlas.{m}": f"atlas.tools.{m}"
       for m in ("attribution", "explain", "sanity", "attack", "adversarial", "fooling", "channels")},
    **{f"atlas.{m}": f"atlas.runtime.{m}" for m in ("distributed", "precision", "forward_ad")},
    "atlas.datasets": "atlas.data.datasets",
    "atlas.serve": "atlas.web.serve",
    "atlas.export": "atlas.web.export",
    "atlas.notebook": "atlas.web.notebook",
    "atlas.optvis.style": "atlas.optvis.neural_style",
}


def moved_module(module: str) -> str:
    """The current path of ``module``, given its path before the move (unchanged if it did not move)."""
    for old, new in MOVED_MODULES.items():
        if module == old or module.startswith(old + "."):
            return new + module[len(old):]
    return module


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(moved_module(module), name)


def save_pickle(obj: Any, path: str | os.PathLike) -> None:
    """Pickle ``obj`` into ``path`` atomically (a temporary file beside it, then a rename)."""
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def load_pickle(path: str | os.PathLike) -> Any:
    """The object pickled in ``path``, with classes under old module paths found at their new ones."""
    with open(path, "rb") as fh:
        return _Unpickler(fh).load()


__all__ = ["MOVED_MODULES", "load_pickle", "moved_module", "save_pickle"]
