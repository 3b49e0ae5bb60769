"""Rules of the package's layout that the import linter does not check."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "atlas"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a source file, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_only_the_store_touches_hdf5():
    """Every HDF5 read and write goes through ``atlas/store/``: no other module imports h5py."""
    store = PACKAGE / "store"
    offenders = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if store not in path.parents
        for line, module in _imported_modules(path)
        if module == "h5py" or module.startswith("h5py.")
    ]
    assert not offenders, ("only atlas/store/ may import h5py; move these reads and writes into a store "
                           f"module: {', '.join(offenders)}")


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    import h5py\n    from h5py import File\n")
    assert _imported_modules(src) == [(2, "h5py"), (3, "h5py")]
