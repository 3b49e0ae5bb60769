"""The package as a user installs it: build a wheel, install it into a fresh venv, run ``atlas``.

The wheel is built from a copy of the sources (``pyproject.toml``, ``README.md``, ``atlas/``,
``data/``), so the test leaves no build folders in the checkout. The fresh venv is made with
``--system-site-packages`` and a ``.pth`` line that adds this interpreter's site-packages, so
torch and the other dependencies are found there instead of being installed again; the wheel
itself goes into the venv's own site-packages, which come first on ``sys.path``.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"`{' '.join(argv)}` failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("atlas", "data"):
        shutil.copytree(REPO / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
         cwd=src)
    (whl,) = out.glob("*.whl")
    return whl


def test_wheel_holds_the_viewer_and_the_data(wheel):
    assert wheel.name.startswith("activation_atlas-")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(z.read(meta_name).decode())
        entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    for path in ("atlas/web/viewer/index.html", "atlas/web/viewer/atlas.js", "atlas/web/viewer/atlas.css",
                 "atlas/web/viewer/vendor/leaflet/leaflet.js", "atlas/web/viewer/vendor/leaflet/leaflet.css",
                 "atlas/resources/data/imagenet_classes.tsv", "atlas/resources/data/README.md",
                 "atlas/resources/data/natural_spectrum.npy"):
        assert path in names, f"the wheel lacks {path}"
    assert meta["Name"] == "activation-atlas"
    requires = meta.get_all("Requires-Dist")
    torch_reqs = [r for r in requires if r.split(">")[0].split("<")[0].strip() in ("torch", "torchvision")]
    assert sorted(torch_reqs) == ["torch>=2.4", "torchvision>=0.19"]  # no upper bounds
    assert "atlas = atlas.cli:main" in entry_points


def test_installed_wheel_runs_the_atlas_command(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (purelib / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATLAS_INCEPTIONV1_WEIGHTS")}
    env["OMP_NUM_THREADS"] = "1"
    where = _run([str(py), "-c",
                  "import atlas, atlas.resources as r, atlas.web.serve as s; from importlib import resources; "
                  "d = resources.files('atlas.resources') / 'data'; "
                  "print(atlas.__file__); print(d); print(s.VIEWER_DIR); print(len(r.imagenet_class_names()))"],
                 cwd=tmp_path, env=env).split()
    for path in where[:3]:
        assert path.startswith(str(venv)), f"{path} is not the installed copy"
    assert not Path(where[1]).is_symlink() and where[3] == "1000"

    atlas_cmd = str(venv / "bin" / "atlas")
    assert "collect" in _run([atlas_cmd, "--help"], cwd=tmp_path, env=env)
    out = _run([atlas_cmd, "-q", "vis", "logit:snorkel", "--random-init", "--steps", "2", "--size", "32",
                "-o", "snorkel.png"], cwd=tmp_path, env=env)
    assert "wrote snorkel.png" in out and (tmp_path / "snorkel.png").stat().st_size > 0
    out = _run([atlas_cmd, "-q", "vis", "logit:snorkel", "--random-init", "--steps", "2", "--size", "32",
                "--param", "maco", "-o", "maco.png"], cwd=tmp_path, env=env)  # the packaged spectrum
    assert "wrote maco.png" in out and (tmp_path / "maco.png").stat().st_size > 0
