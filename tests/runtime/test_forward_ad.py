"""Forward-mode AD through :mod:`atlas.runtime.forward_ad`: right tangents, and no TorchScript warning."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.autograd.forward_ad as fwAD

from atlas.runtime.forward_ad import dual_level


def test_dual_level_gives_the_jacobian_vector_product():
    x, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -1.0])
    with dual_level():
        y = fwAD.make_dual(x, v).pow(2).sum()
        tangent = fwAD.unpack_dual(y).tangent
    assert tangent.item() == (2 * x * v).sum().item() == -5.0


def test_first_forward_ad_use_warns_nothing():
    # a fresh interpreter: torch builds its forward-AD decompositions on first use, with the
    # deprecated torch.jit.script; every warning is an error here
    code = (
        "import torch, torch.autograd.forward_ad as fwAD\n"
        "from atlas.runtime.forward_ad import dual_level\n"
        "with torch.no_grad(), dual_level():\n"
        "    y = torch.nn.functional.relu(fwAD.make_dual(torch.ones(3), torch.ones(3)))\n"
        "    assert fwAD.unpack_dual(y).tangent.sum().item() == 3.0\n"
    )
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
