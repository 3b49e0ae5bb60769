"""The public API holds in any import order: every exported name is the function or class its home defines.

A package attribute that is both a submodule and a function is replaced when the submodule is
imported (``import atlas.x`` sets ``atlas.x`` to the module), so the checks run after every module
of the package has been imported, in fresh interpreters and in several orders.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter: import modules in the order given ("walk", "reverse", or a list of
# names; "names" touches every exported name first), then check every exported name.
_PROBE = r'''
import importlib, inspect, json, pkgutil, sys, types
import atlas

def all_modules():
    names = []
    for info in pkgutil.walk_packages(atlas.__path__, "atlas."):
        if info.name.split(".")[-1] != "__main__":
            names.append(info.name)
    return names

plan = json.loads(sys.argv[1])
for step in plan:
    if step == "names":
        for name in atlas.__all__:
            getattr(atlas, name)
    elif step == "walk":
        for m in all_modules():
            importlib.import_module(m)
    elif step == "reverse":
        for m in reversed(all_modules()):
            importlib.import_module(m)
    else:
        importlib.import_module(step)

problems = []
for name in atlas.__all__:
    if name == "__version__":
        continue
    obj = getattr(atlas, name)
    home = importlib.import_module(atlas._EXPORTS[name])
    if isinstance(obj, types.ModuleType):
        problems.append(f"atlas.{name} is the module {obj.__name__}, not what {home.__name__} defines")
    elif not (inspect.isclass(obj) or inspect.isfunction(obj)):
        problems.append(f"atlas.{name} is a {type(obj).__name__}, not a function or class")
    elif getattr(home, name, None) is not obj:
        problems.append(f"atlas.{name} is not {home.__name__}.{name}")
    elif not obj.__module__.startswith("atlas."):
        problems.append(f"atlas.{name} is defined in {obj.__module__}, outside the package")
# every package's own exports, after every module has been imported
for m in [atlas.__name__] + all_modules():
    mod = importlib.import_module(m)
    if not hasattr(mod, "__path__"):
        continue
    for name in getattr(mod, "__all__", ()):
        if isinstance(getattr(mod, name, None), types.ModuleType):
            problems.append(f"{m}.{name} is a module, not the exported name")
# every module came from this package (not from another copy of atlas on sys.path)
root = atlas.__path__[0]
for m, mod in sorted(sys.modules.items()):
    if (m == "atlas" or m.startswith("atlas.")) and not (getattr(mod, "__file__", None) or root).startswith(root):
        problems.append(f"{m} was imported from {mod.__file__}, outside {root}")
print(json.dumps(problems))
'''

ORDERS = {
    "modules first": ["walk"],
    "names first": ["names", "walk"],
    "reverse": ["reverse", "names"],
    "namesakes first": ["atlas.stages.collect", "atlas.stages.collect.stage", "atlas.web.serve", "atlas.web.serve.server",
                        "atlas.optvis.neural_style", "atlas.optvis.dream", "atlas.config", "walk"],
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_exported_names_survive_any_import_order(order: str) -> None:
    r = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(ORDERS[order])], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def _modules() -> list[str]:
    import pkgutil

    import atlas

    return [i.name for i in pkgutil.walk_packages(atlas.__path__, "atlas.") if not i.name.endswith("__main__")]


def test_no_module_is_named_like_a_name_its_package_exports() -> None:
    import importlib
    import pkgutil

    import atlas

    for pkg in ["atlas"] + [m for m in _modules() if hasattr(importlib.import_module(m), "__path__")]:
        mod = importlib.import_module(pkg)
        children = {i.name for i in pkgutil.iter_modules(mod.__path__)}
        exported = set(getattr(mod, "__all__", ()))
        if pkg == "atlas":
            exported |= set(atlas._EXPORTS)
        assert not children & exported, f"{pkg} has submodules named like its exports: {sorted(children & exported)}"


_FILE_NAMES = {"atlas.json", "atlas.js", "atlas.css"}


def _documented_names() -> set[str]:
    import atlas

    text = (REPO / "README.md").read_text() + (atlas.__doc__ or "")
    return {n.rstrip(".") for n in re.findall(r"\batlas(?:\.[A-Za-z_]\w*)+", text)} - _FILE_NAMES


def test_the_python_names_the_readme_shows_are_what_they_say() -> None:
    import importlib

    import atlas

    names = _documented_names()
    assert {"atlas.collect", "atlas.reduce_file", "atlas.show"} <= names  # the scan finds them
    modules = {"atlas", *_modules()}
    for dotted in sorted(names):
        parts = dotted.split(".")
        i = max(k for k in range(1, len(parts) + 1) if ".".join(parts[:k]) in modules)
        obj = importlib.import_module(".".join(parts[:i]))  # the longest module prefix, then attributes
        for part in parts[i:]:
            assert hasattr(obj, part), f"the README names {dotted}, but {'.'.join(parts[:i])} has no {part}"
            obj = getattr(obj, part)
            i += 1
        if len(parts) == 2 and parts[1] in atlas._EXPORTS:
            assert getattr(atlas, parts[1]) is getattr(importlib.import_module(atlas._EXPORTS[parts[1]]), parts[1])
            assert not hasattr(getattr(atlas, parts[1]), "__path__"), f"{dotted} is a package"
