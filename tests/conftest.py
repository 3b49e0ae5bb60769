"""Shared fixtures.

The real InceptionV1 weights and the 1000 sample photos are read from a folder given by
``$ATLAS_SHARED_DIR`` (default: ``../shared`` beside the repository), holding
``models/bvlc_googlenet.pth`` and ``images/imagenet-sample/``. Tests that need them are marked
``shared`` and skip with the reason when the folder is missing; CI sets the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("ATLAS_SHARED_DIR", REPO.parent / "shared")).resolve()


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("ATLAS_REQUIRE_SHARED"):
            pytest.fail(f"{path} is missing but ATLAS_REQUIRE_SHARED is set; set ATLAS_SHARED_DIR")
        pytest.skip(f"{path} not found; set ATLAS_SHARED_DIR to the folder with models/ and images/")
    return path


@pytest.fixture(scope="session")
def inceptionv1_weights() -> Path:
    return _need(shared_dir() / "models" / "bvlc_googlenet.pth")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 1000 ImageNet sample photos; sorted file order is the class index."""
    return _need(shared_dir() / "images" / "imagenet-sample")


@pytest.fixture(scope="session")
def sample_paths(sample_dir: Path) -> list[Path]:
    return sorted(sample_dir.glob("*.JPEG"))


@pytest.fixture(scope="session")
def inceptionv1(inceptionv1_weights: Path):
    """The real BVLC InceptionV1 on the CPU, shared by the whole session (read-only!)."""
    from atlas.models import load_model

    return load_model("inceptionv1", weights=inceptionv1_weights, device="cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for optimization loops: on a shared 2-core machine OpenMP
    spin-waiting against other processes made 2 threads up to 20x slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete tiny atlas run folder (see ``tinyrun.py``): activations, layout, cells, icons,
    tiles, from random-init InceptionV1 on 12 noise photos under ``<run>/../photos``."""
    from atlas.pipeline import run_pipeline
    from tinyrun import make_config

    root = tmp_path_factory.mktemp("tiny-run")
    run_pipeline(make_config(root), progress=False)
    return root / "run"


@pytest.fixture
def atlas_cli(capsys):
    """Run the ``atlas`` command in this process: ``atlas_cli("grid", "--sizes", "abc")`` ->
    ``(exit code, stdout, stderr)``; argparse's exits count as exit codes. An exception that
    escapes ``main`` (a traceback for the user) fails the test."""
    from atlas.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(["-q", *argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
