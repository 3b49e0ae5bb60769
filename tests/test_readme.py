"""The README runs as written.

Every ``atlas ...`` line of every ``bash`` block in README.md must parse with the real command
line parser (and name config files that exist); the "Stage by stage" block, the one a new user
follows, is executed command by command, exactly as written, in a fresh folder holding
``photos/`` (eight of the shared sample photos) with small settings appended to each command,
on the real InceptionV1 weights.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from atlas.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOUR_MARK = "tests/test_readme.py runs this block"
TOUR_PHOTOS = (
    "n04251144_snorkel", "n10565667_scuba_diver", "n01484850_great_white_shark", "n02066245_grey_whale",
    "n01440764_tench", "n01443537_goldfish", "n03400231_frying_pan", "n04596742_wok",
)
#: Small settings appended to each command of the tour (later flags override the README's).
SMALL = {
    "collect": ["--positions", "16", "--batch-size", "8", "--workers", "0"],
    "reduce": ["--n-neighbors", "8"],
    "grid": ["--sizes", "4,8", "--min-count", "2"],
    "render": ["--steps", "8", "--icon-size", "48"],
    "tiles": [],
    "serve": ["--port", "0"],
    "export": [],
    "vis": ["--steps", "8", "--size", "64"],
    "explain": ["--methods", "saliency,grad_cam"],
    "attack": ["--steps", "4", "--patch-px", "32", "--candidates", "1", "--random-cells", "1", "--noise-patches", "1",
               "--augment", "6", "--sizes", "0.3", "--level", "4"],
}
#: What each command of the tour leaves behind (relative to the working folder).
WRITES = {
    "collect": ["runs/demo/activations.h5"],
    "reduce": ["runs/demo/layout.h5"],
    "grid": ["runs/demo/cells.h5"],
    "render": ["runs/demo/icons.h5"],
    "tiles": ["runs/demo/tiles/manifest.json"],
    "export": ["demo-site/index.html", "demo-site/atlas.json", "demo-site/static/atlas.js",
               "demo-site/data/tiles/manifest.json", "demo-site/data/tiles/classes/index.json"],
    "vis": ["inception4c_447.png"],
    "explain": ["n04251144_snorkel-explain.png", "runs/demo/tiles/overlays/n04251144_snorkel.json"],
    "attack": ["runs/demo/attacks/snorkel-to-scuba_diver/report.json"],
}


def bash_blocks(text: str) -> list[tuple[str, str]]:
    """``(the line before the block, the block's text)`` for every fenced ``bash`` block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"([^\n]*)\n```bash\n(.*?)\n```", text, re.S)]


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuations joined, comments dropped."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            out.append(argv)
    return out


def atlas_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``atlas`` (leading ``VAR=value`` and ``.venv/bin/`` dropped), or None."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        argv = argv[1:]
    if argv and argv[0] in ("atlas", ".venv/bin/atlas"):
        return argv[1:]
    return None


def test_the_readme_has_the_stage_by_stage_tour():
    tours = [block for before, block in bash_blocks(README.read_text()) if TOUR_MARK in before]
    assert len(tours) == 1
    stages = [atlas_argv(argv)[0] for argv in commands(tours[0])]
    assert stages == list(SMALL)


def test_every_atlas_command_in_the_readme_parses():
    parser = build_parser()
    seen = 0
    for _before, block in bash_blocks(README.read_text()):
        for argv in commands(block):
            args = atlas_argv(argv)
            if args is None:
                continue
            parsed = parser.parse_args(args)  # a bad flag or a missing argument exits here
            seen += 1
            if parsed.command == "run":
                assert (REPO / parsed.config).is_file(), f"README names {parsed.config}, which does not exist"
    assert seen >= 10


def test_readme_python_blocks_compile_and_name_real_functions():
    import atlas

    blocks = re.findall(r"```python\n(.*?)\n```", README.read_text(), re.S)
    assert blocks
    for block in blocks:
        compile(block, "README.md", "exec")
        for name in re.findall(r"\batlas\.(\w+)\(", block):
            assert callable(getattr(atlas, name)), f"README calls atlas.{name}, which does not exist"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTHONWARNINGS", None)  # the warnings a user sees, with Python's default filters
    return env


def _serve(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Start ``atlas serve`` as typed, read its URL, check what it serves, stop it."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"at (http://\S+) ", line)
        assert match, f"no URL in {line!r}; stderr: {proc.stderr.read() if proc.poll() is not None else ''}"
        url = match.group(1)
        with urllib.request.urlopen(url + "atlas.json", timeout=10) as r:
            runs = json.loads(r.read())["runs"]
        assert [run["name"] for run in runs] == ["demo"]  # the run's name, not "tiles"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert b"atlas.js" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.shared
@pytest.mark.slow
def test_stage_by_stage_tour_runs_as_written(tmp_path, sample_dir, inceptionv1_weights):
    tour = next(block for before, block in bash_blocks(README.read_text()) if TOUR_MARK in before)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in TOUR_PHOTOS:
        (photos / f"{name}.JPEG").symlink_to(sample_dir / f"{name}.JPEG")
    env = _env()
    env["ATLAS_INCEPTIONV1_WEIGHTS"] = str(inceptionv1_weights)
    assert shutil.which("atlas", path=env["PATH"]) == str(Path(sys.executable).parent / "atlas")
    for argv in commands(tour):
        stage = atlas_argv(argv)[0]
        full = argv + SMALL[stage]
        if stage == "serve":
            _serve(full, tmp_path, env)
            continue
        t0 = time.monotonic()
        r = subprocess.run(full, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"`{shlex.join(argv)}` failed ({time.monotonic() - t0:.0f} s):\n{r.stderr[-3000:]}"
        assert "Warning" not in r.stderr, f"`{shlex.join(argv)}` warned:\n{r.stderr[-3000:]}"
        for rel in WRITES[stage]:
            assert (tmp_path / rel).is_file(), f"`{shlex.join(argv)}` did not write {rel}"
    manifest = json.loads((tmp_path / "runs/demo/tiles/manifest.json").read_text())
    assert [lv["size"] for lv in manifest["levels"]] == [4, 8] and manifest["layer"] == "inception4c"
    report = json.loads((tmp_path / "runs/demo/attacks/snorkel-to-scuba_diver/report.json").read_text())
    assert report["source"] == "snorkel" and report["target"] == "scuba diver"
